"""Every Triton kernel compiles for an H100/H200 (sm_90) at the engine's GPU block sizes — checked on
a machine without a GPU through Triton's own compiler and bundled ptxas — with the installed Triton
(CI runs it under the CPU machines' Triton and under Triton 3.6, the GPU machine's) — and spills no
register to local memory (ptxas's report: 0 bytes of spill stores and loads for every variant).
The test prints ptxas's register, spill and shared-memory report of every compiled kernel (pytest
-s, or the captured output of a failure; `python tests/kernels/test_kernel_compile.py --table`
prints it alone). bench/cost_model.py compiles through record_launches and compile_launch too.

Also: the chunk lengths the engine cuts (any number of steps) share one compiled variant of every
kernel, so a CUDA graph captured for a new chunk length never meets a kernel that still has to
compile (compiling is not allowed while a stream captures). Checked through Triton's own
specialization binder for a CUDA target.

The interpreter (the other tests) does not enforce what the GPU compiler does: matching types of a
variable in both branches of an `if`, tl.dot sides ≥ 16, shared memory within the SM's limit. This
test records the launches of one step of several configurations (kernels replaced by recorders;
the paper-real ones in both regimes) and compiles each for target cuda:90 in a subprocess without TRITON_INTERPRET (the interpreter
replaces @triton.jit functions, so it cannot compile in the test process).
"""
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import pytest

SM90_SHARED_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)

CASES = [  # (config changes, precision to compile with)
    (dict(preset="paper-real"), "ieee"),
    (dict(preset="gromov"), "ieee"),
    (dict(preset="gromov", loss="cross_entropy", activation="relu", optimizer="adam",
          grad_filter="ema", orthograd=True, fixed_norm=True), "tf32"),
    (dict(preset="paper-real", loss="stablemax", loss_dtype="float64", optimizer="sgd",
          momentum=0.9, grad_filter="ma", filter_window=3, encoding="concat"), "tf32x3"),
    (dict(preset="paper-real", dtype="float64", activation="quadratic", loss="cross_entropy",
          optimizer="adamw", grad_filter="ma", filter_type="sum", filter_warmup=False,
          fixed_norm=True), "ieee"),
    (dict(preset="paper-real", dtype="float64", orthograd=True), "ieee"),
]


class _Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **kwargs) is recorded, not run."""
    launches: list = []

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, grid, args, kwargs))


def record_launches(changes: dict, precision: str, regimes=("tiled", "fused"), n_steps: int = 1):
    """Run in the subprocess: the launches (fn, grid, args, kwargs) of n_steps of two models of
    Config.preset(**changes) in each regime that fits (kernels replaced by recorders, nothing
    runs), compiled as precision. Returns (config, launches)."""
    import numpy as np
    import torch
    from grokfast.kernels.triton import fused, rows, stats, update
    from grokfast.kernels.triton import launch as klaunch

    from grokfast import Config, GrokfastError, make_dataset
    from grokfast.backends.triton.stepper import TritonStepper

    launches = _Recorder.launches = []
    for mod in (fused, rows, update, stats):
        for name in dir(mod):
            if name.endswith("_kernel") and not isinstance(getattr(mod, name), _Recorder):
                setattr(mod, name, _Recorder(getattr(mod, name)))
    klaunch.interpreting = lambda: True  # let the stepper allocate on the CPU; nothing is launched
    klaunch.FMA_IN_INTERPRETER = True    # fused float64 products as a GPU compiles them
    for mod in (fused, rows, update):   # and accept TF32 there: it is compiled, never run
        mod.check_precision = lambda *args: None
    changes = dict(changes)
    c = Config.preset(changes.pop("preset"), **changes)
    data = make_dataset(c)
    for regime in regimes:
        try:
            st = TritonStepper([c, c.replace(seed=1)], data, torch.device("cpu"), regime=regime)
        except GrokfastError:  # gromov does not fit the fused regime
            continue
        st.spec = dataclasses.replace(st.spec, precision=precision)
        st.advance(0, n_steps, np.ones(2, dtype=bool))
    return c, launches


def _signature(fn, args, kwargs):
    """Triton's signature, constexprs and compile options of one recorded launch."""
    import torch

    def arg_type(a):
        if isinstance(a, torch.Tensor):
            return "*" + {torch.float32: "fp32", torch.float64: "fp64", torch.int32: "i32"}[a.dtype]
        if isinstance(a, bool):
            return "i1"
        return "i32" if abs(a) < 2 ** 31 else "i64"

    constexprs = dict(kwargs)
    options = {k: constexprs.pop(k) for k in ("num_warps", "num_stages") if k in constexprs}
    signature = {n: arg_type(a) for n, a in zip(fn.arg_names, args)}
    signature.update({n: "constexpr" for n in constexprs})
    return signature, constexprs, options


def compile_launch(fn, args, kwargs):
    """Compile one recorded launch for sm_90: (compiled kernel, ptxas -v's log)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton's make_cubin

    signature, constexprs, options = _signature(fn, args, kwargs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                           target=GPUTarget("cuda", 90, 32), options=options)
    return k, log.getvalue()


def _compile_all() -> list:
    """Run in the subprocess: record one step's launches per case and compile each for sm_90."""
    out, seen = [], set()
    for number, (changes, precision) in enumerate(CASES):
        c, launches = record_launches(changes, precision)
        label = {k: v for k, v in changes.items() if k != "preset"}
        for fn, _grid, args, kwargs in launches:
            key = (fn.__name__, *(json.dumps(x, default=str) for x in _signature(fn, args, kwargs)))
            if key in seen:
                continue
            seen.add(key)
            row = dict(kernel=fn.__name__, case=f"{changes['preset']} {label}", number=number,
                       dtype=str(c.dtype), precision=kwargs.get("PRECISION", "-"),
                       warps=kwargs.get("num_warps", 4))
            try:
                k, log = compile_launch(fn, args, kwargs)
                out.append(dict(row, ok=True, shared=k.metadata.shared, **_ptxas_report(log)))
            except Exception as e:  # report every failure, not just the first
                out.append(dict(row, ok=False, error=f"{type(e).__name__}: {e}"[:3000]))
    return out


def _ptxas_report(log: str) -> dict:
    """Registers and spill bytes from ptxas -v's report of one kernel (None if it said nothing)."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_stores=int(spills.group(1)) if spills else None,
                spill_loads=int(spills.group(2)) if spills else None)


def table(results: list) -> str:
    """The register/spill report: one line per compiled kernel variant."""
    lines = [f"sm_90 compile report (triton {_triton_version()}): kernel, dtype, precision, warps, "
             f"registers/thread, spill stores/loads (bytes/thread), shared memory (bytes)",
             f"{'kernel':<24} {'dtype':<8} {'prec':<7} {'warps':>5} {'regs':>5} "
             f"{'spill st/ld':>12} {'shared':>7}  case"]
    for r in results:
        if not r["ok"]:
            lines.append(f"{r['kernel']:<24} {r['dtype']:<8} {r['precision']:<7} {r['warps']:>5} "
                         f"FAILED  {r['case']}")
            continue
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        lines.append(f"{r['kernel']:<24} {r['dtype']:<8} {r['precision']:<7} {r['warps']:>5} "
                     f"{r['registers']!s:>5} {spill:>12} {r['shared']:>7}  {r['case']}")
    return "\n".join(lines)


def _triton_version() -> str:
    import triton
    return triton.__version__


CHUNK_LENGTHS = (1, 7, 8, 16, 20, 200, 208, 999, 1000, 2000)  # every kind the engine cuts


def _variants_per_chunk_length() -> dict:
    """Run in the subprocess: kernel name → the set of specialization keys its launches get over
    CHUNK_LENGTHS (tiled and fused regimes of paper-real), through Triton's binder for sm_90."""
    import numpy as np
    import torch
    from grokfast.kernels.triton import fused, rows, stats, update
    from grokfast.kernels.triton import launch as klaunch
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from grokfast import Config, make_dataset
    from grokfast.backends.triton.stepper import TritonStepper

    keys = {}
    backend = make_backend(GPUTarget("cuda", 90, 32))

    class Recorder:
        def __init__(self, fn):
            self.fn = fn
            self.binder = create_function_from_signature(fn.signature, fn.params, backend)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                _, specialization, options = self.binder(*args, **kwargs)
                keys.setdefault(self.fn.__name__, set()).add(repr((specialization, options)))
            return launch

    for mod in (fused, rows, update, stats):
        for name in dir(mod):
            if name.endswith("_kernel"):
                setattr(mod, name, Recorder(getattr(mod, name)))
    klaunch.interpreting = lambda: True
    klaunch.FMA_IN_INTERPRETER = True
    c = Config.preset("paper-real", grad_filter="ma", filter_window=3, orthograd=True,
                      fixed_norm=True, log_every=1)
    data = make_dataset(c)
    for regime in ("tiled", "fused"):
        st = TritonStepper([c], data, torch.device("cpu"), regime=regime)
        step = 0
        for n in CHUNK_LENGTHS:
            st.advance(step, n, np.ones(1, dtype=bool))
            step += n
    return {k: len(v) for k, v in keys.items()}


def _has_cuda_compiler() -> bool:
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError:
        return False
    return True


def _run(*args) -> object:
    """This file as a script without TRITON_INTERPRET; its last stdout line, parsed as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["TRITON_ALWAYS_COMPILE"] = "1"  # a cached kernel would skip ptxas and its report
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _has_cuda_compiler(), reason="triton's NVIDIA backend is not installed")
def test_kernels_compile_for_sm90():
    results = _run()
    print("\n" + table(results))
    failures = [r for r in results if not r["ok"]]
    assert not failures, "\n\n".join(f"{r['kernel']} {r['case']} {r['precision']}:\n{r['error']}"
                                     for r in failures)
    names = {r["kernel"] for r in results}
    assert names == {"_fused_steps_kernel", "_rows_fwd_bwd_kernel", "_update_grad_kernel", "_update_orth_kernel",
                     "_update_step_kernel", "_update_rescale_kernel", "_stats_kernel"}
    too_big = [r for r in results if r["shared"] > SM90_SHARED_LIMIT]
    assert not too_big, too_big
    assert {r["dtype"] for r in results} == {"float32", "float64"}
    assert all(r["registers"] for r in results), "ptxas printed no register report"
    assert all(r["spill_stores"] is not None for r in results), "ptxas printed no spill report"
    spilled = [r for r in results if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, ("ptxas spills registers to local memory (every step pays it; see the "
                         "kernel docstrings for how the kernels keep tiles small):\n"
                         + table(spilled))


@pytest.mark.skipif(not _has_cuda_compiler(), reason="triton's NVIDIA backend is not installed")
def test_every_chunk_length_shares_one_compiled_variant():
    variants = _run("--variants")
    assert set(variants) >= {"_fused_steps_kernel", "_rows_fwd_bwd_kernel", "_update_grad_kernel",
                             "_update_orth_kernel", "_update_step_kernel",
                             "_update_rescale_kernel", "_stats_kernel"}
    assert all(n == 1 for n in variants.values()), (
        f"kernels with more than one variant over chunk lengths {CHUNK_LENGTHS}: {variants}")


if __name__ == "__main__":
    if "--variants" in sys.argv:
        print(json.dumps(_variants_per_chunk_length()))
    elif "--table" in sys.argv:
        print(table(_compile_all()))
    else:
        print(json.dumps(_compile_all()))
