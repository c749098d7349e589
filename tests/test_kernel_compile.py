"""Every Triton kernel compiles for an H100/H200 (sm_90) at the engine's GPU block sizes — checked on
a machine without a GPU through Triton's own compiler and bundled ptxas.

The interpreter (the other tests) does not enforce what the GPU compiler does: matching types of a
variable in both branches of an `if`, tl.dot sides ≥ 16, shared memory within the SM's limit. This
test records the launches of one step of several configurations (kernels replaced by recorders;
the paper-real ones in both regimes) and compiles each for target cuda:90 in a subprocess without TRITON_INTERPRET (the interpreter
replaces @triton.jit functions, so it cannot compile in the test process).
"""
import json
import os
import subprocess
import sys

import pytest

SM90_SHARED_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)

CASES = [  # (config changes, precision to compile with)
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


def _compile_all() -> list:
    """Run in the subprocess: record one step's launches per case and compile each for sm_90."""
    import numpy as np
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from grokfast import Config, GrokfastError, make_dataset
    from grokfast.kernels import common, fused, rows, stats, update
    from grokfast.triton_backend import TritonStepper

    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.fn, args, kwargs))

    for mod in (fused, rows, update, stats):
        for name in dir(mod):
            if name.endswith("_kernel"):
                setattr(mod, name, Recorder(getattr(mod, name)))
    common.interpreting = lambda: True  # let the stepper allocate on the CPU; nothing is launched
    for mod in (fused, rows, update):   # and accept TF32 there: it is compiled, never run
        mod.check_precision = lambda *args: None

    def arg_type(a):
        if isinstance(a, torch.Tensor):
            return "*" + {torch.float32: "fp32", torch.float64: "fp64", torch.int32: "i32"}[a.dtype]
        if isinstance(a, bool):
            return "i1"
        return "i32" if abs(a) < 2 ** 31 else "i64"

    out, seen = [], set()
    for changes, precision in CASES:
        changes = dict(changes)
        c = Config.preset(changes.pop("preset"), **changes)
        launches.clear()
        data = make_dataset(c)
        for regime in ("tiled", "fused"):
            try:
                st = TritonStepper([c, c.replace(seed=1)], data, torch.device("cpu"), regime=regime)
            except GrokfastError:  # gromov does not fit the fused regime
                continue
            st.configs = [ci.replace(precision=precision) for ci in st.configs]
            st.advance(0, 1, np.ones(2, dtype=bool))
        for fn, args, kwargs in launches:
            options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            signature = {n: arg_type(a) for n, a in zip(fn.arg_names, args)}
            signature.update({n: "constexpr" for n in kwargs})
            key = (fn.__name__, json.dumps(signature), json.dumps({**kwargs, **options}, default=str))
            if key in seen:
                continue
            seen.add(key)
            try:
                k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=kwargs),
                                   target=GPUTarget("cuda", 90, 32), options=options)
                out.append(dict(kernel=fn.__name__, ok=True, shared=k.metadata.shared,
                                case=repr(changes), precision=precision))
            except Exception as e:  # report every failure, not just the first
                out.append(dict(kernel=fn.__name__, ok=False, error=f"{type(e).__name__}: {e}"[:3000],
                                case=repr(changes), precision=precision))
    return out


def _has_cuda_compiler() -> bool:
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_cuda_compiler(), reason="triton's NVIDIA backend is not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = [r for r in results if not r["ok"]]
    assert not failures, "\n\n".join(f"{r['kernel']} {r['case']} {r['precision']}:\n{r['error']}"
                                     for r in failures)
    names = {r["kernel"] for r in results}
    assert names == {"_fused_steps_kernel", "_rows_fwd_bwd_kernel", "_update_grad_kernel", "_update_orth_kernel",
                     "_update_step_kernel", "_update_rescale_kernel", "_stats_kernel"}
    too_big = [r for r in results if r["shared"] > SM90_SHARED_LIMIT]
    assert not too_big, too_big


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
