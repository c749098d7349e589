"""GPU throughput of the Triton backend against the plain PyTorch loop, measured side by side.

    python bench/bench_gpu.py                     # the table for bench/RESULTS.md (markdown)
    python bench/bench_gpu.py --long 1000000      # … plus one timed 10⁶-step paper-real run
    python bench/bench_gpu.py --dry-run           # the same logic on tiny models, any machine
    pytest bench/bench_gpu.py --benchmark-enable  # the cases under pytest-benchmark (needs CUDA)

Without CUDA the pytest cases are skipped (the Triton kernels need a GPU; the CPU interpreter is
~10⁴× slower and measures nothing useful). bench/gpu_check.sh runs the table and the GPU tests.

Cases: paper-real (p = 11, 70 training pairs, width 128, ReLU, MSE, GD) one model; gromov-like
width 512 (p = 97, ordered, concat, 30 % train so N = 2823, x², MSE, AdamW) one model; paper-real
with 64 seeds in one launch against 64 sequential reference runs (the reference's one-model time
× 64, measured in the same run). Providers: "reference" (grokfast.reference: autograd +
torch.optim on the GPU, the loop a researcher writes), "torch" (grokfast's torch backend on the
GPU), "triton" (regime chosen by size: fused for paper-real, tiled + CUDA graphs for width 512;
IEEE float32 products, the default) and "triton-tf32" (the same with precision="tf32", GPU only).
Each case uses its preset's log/eval intervals, so the statistics a real run records are included;
every config carries the device the benchmark runs on (device="cuda" on a GPU).

Reported per case and provider: median time per step and spread over the repeats, model-steps/s,
the ratio to the reference measured in the same run, and the achieved GFLOP/s of the three GEMMs
of a step (6·N·width·p per model: Ŷ = H W2, Hᵀ dŶ, dŶ W2ᵀ) against the H200/H100 fp32 peak.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

try:
    import pytest
except ImportError:  # the script needs no pytest; only the pytest cases below do
    pytest = None

from bench_cpu import git_commit  # bench/ is on sys.path: run as a script or by pytest

from grokfast import Config, make_dataset
from grokfast.backends.registry import make_stepper

PROVIDERS = ("reference", "torch", "triton", "triton-tf32")
FP32_PEAK_GFLOPS = 67_000.0   # H100/H200 SXM non-tensor fp32, vendor datasheet
WARMUP_STEPS = 20


@dataclass(frozen=True)
class Case:
    config: Config
    models: int
    steps: int                 # timed steps per measurement
    reference_models: int = 1  # the reference runs this many models; its time is scaled to `models`

    @property
    def gemm_flop(self) -> float:
        c = self.config
        return 6 * c.n_train * c.width * c.p * self.models


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cases(dry_run: bool = False) -> dict:
    """The benchmark cases, their configs on device() (backend="triton" refuses a "cpu" config on a
    GPU machine)."""
    dev = device().type
    if dry_run:  # the same logic on models small enough for the CPU interpreter
        tiny = Config(p=5, width=16, n_test=5, log_every=1, eval_every=2, device=dev)
        return {"paper-real": Case(tiny, 1, 2), "gromov-512": Case(tiny.replace(width=32), 1, 2),
                "paper-real-64-seeds": Case(tiny, 3, 2)}
    paper = Config.preset("paper-real", device=dev)
    gromov = Config.preset("gromov", train_frac=0.3, device=dev)
    return {"paper-real": Case(paper, 1, 2000), "gromov-512": Case(gromov, 1, 200),
            "paper-real-64-seeds": Case(paper, 64, 2000)}


def long_config(steps: int, dry_run: bool) -> Config:
    """The config of the timed long run: paper-real (tiny in a dry run) on device()."""
    if dry_run:
        return Config(p=5, width=16, n_test=5, steps=steps, log_every=1, eval_every=1,
                      device=device().type)
    return Config.preset("paper-real", steps=steps, device=device().type)


def provider_config(case: Case, provider: str) -> Config:
    """The case's config as `provider` runs it (triton-tf32: precision="tf32"; torch without numba,
    as on the GPU machine's stack: numerics="host", which on CUDA is what runs anyway)."""
    if provider == "torch" and importlib.util.find_spec("numba") is None:
        return case.config.replace(numerics="host")
    return case.config.replace(precision="tf32") if provider == "triton-tf32" else case.config


def setup(case: Case, provider: str, steps: int = 0):
    """A warmed-up stepper of `provider`; returns the timed function (one call runs `steps`, by
    default case.steps, steps of every model and waits for the GPU)."""
    models = case.reference_models if provider == "reference" else case.models
    config = provider_config(case, provider)
    configs = [config.replace(seed=s) for s in range(models)]
    backend = "triton" if provider.startswith("triton") else provider
    stepper = make_stepper(backend, configs, make_dataset(config), device())
    active = np.ones(models, bool)
    steps = steps or case.steps
    warm = min(WARMUP_STEPS, steps)
    stepper.advance(0, warm, active)      # compiles
    stepper.advance(warm, steps, active)  # the tiled regime captures its CUDA graph here
    state = {"step": warm + steps}

    def run():
        rows = stepper.advance(state["step"], steps, active)
        state["step"] += steps
        if device().type == "cuda":
            torch.cuda.synchronize()
        return rows

    return run


if pytest is not None:
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: Triton kernels do "
                        "not run on the CPU (bench/gpu_check.sh)")
    @pytest.mark.parametrize("provider", PROVIDERS)
    @pytest.mark.parametrize("name", list(cases()))
    def test_gpu_throughput(benchmark, name, provider):
        case = cases()[name]
        run = setup(case, provider, steps=case.config.log_every if benchmark.disabled else 0)
        rows = benchmark.pedantic(run, rounds=3, iterations=1)
        assert rows["train_loss"].size and np.isfinite(rows["train_loss"]).all()  # every recorded step
        if not benchmark.disabled:
            per_step = benchmark.stats.stats.median / case.steps
            models = case.reference_models if provider == "reference" else case.models
            benchmark.extra_info["model_steps_per_s"] = models / per_step


# ---------------------------------------------------------------- script: the results table
def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(all_cases: dict, repeats: int) -> dict:
    """(case, provider) → seconds per step of all the case's models (the reference's scaled to
    them), providers alternating within each repeat; a provider that fails records its error."""
    times, runs = {}, {}
    for name, case in all_cases.items():
        for prov in PROVIDERS:
            if prov == "triton-tf32" and device().type != "cuda":
                times[name, prov] = "skipped: TF32 products need a GPU"
                continue
            try:
                runs[name, prov] = setup(case, prov)
                times[name, prov] = []
            except Exception as e:  # e.g. a backend without GPU support: report, keep going
                times[name, prov] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    for _ in range(repeats):
        for name, case in all_cases.items():
            for prov in PROVIDERS:
                if (name, prov) in runs:
                    scale = case.models / case.reference_models if prov == "reference" else 1
                    times[name, prov].append(_timed(runs[name, prov]) / case.steps * scale)
    return times


def long_run(steps: int, budget_s: float, dry_run: bool) -> str:
    """One paper-real run of `steps` steps through grokfast.train (backend triton), timed; it stops
    after budget_s seconds (reporting its rate and the projected time of all `steps`)."""
    import grokfast
    c = long_config(steps, dry_run)
    t0 = time.perf_counter()
    r = grokfast.train(c, backend="triton", max_time=budget_s)
    wall = time.perf_counter() - t0
    done = max(r.steps_done, 1)
    head = (f"{steps:,} steps in {wall:.1f} s" if r.steps_done >= steps else
            f"stopped at the {budget_s:.0f} s budget after {r.steps_done:,} steps; projected "
            f"{steps:,} steps: {wall / done * steps:.0f} s")
    return (f"long run: paper-real, backend {r.backend}: {head} ({done / wall:,.0f} steps/s, "
            f"{wall / done * 1e6:.1f} µs/step including compilation, logging and evaluation); "
            f"memorized at {r.memorization_step}, grokked at {r.grok_step}, final test acc "
            f"{r.final.get('test_acc', float('nan')):.3f}")


def table(all_cases: dict, times: dict) -> str:
    import triton
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (dry run, CPU interpreter)"
    lines = [f"GPU: {gpu}; torch {torch.__version__}, triton {triton.__version__}, Python "
             f"{platform.python_version()}; commit {git_commit()}; fp32 peak "
             f"{FP32_PEAK_GFLOPS:,.0f} GFLOP/s (datasheet)", "",
             "| case | provider | models | µs/step (median) | spread (min–max) | model-steps/s "
             "| × reference | GEMM GFLOP/s | % of fp32 peak |", "|---|---|---|---|---|---|---|---|---|"]
    for name, case in all_cases.items():
        ref = times[name, "reference"]
        for prov in PROVIDERS:
            t = times[name, prov]
            if isinstance(t, str):
                what = t if t.startswith("skipped") else f"failed: {t}"
                lines.append(f"| {name} | {prov} | {case.models} | {what} | | | | | |")
                continue
            t = np.asarray(t)
            med = float(np.median(t))
            ratio = f"{np.median(ref) / med:.1f}" if not isinstance(ref, str) else "n/a"
            gflops = case.gemm_flop / med / 1e9
            label = (f"{case.models} (1 × {case.models} sequential)" if prov == "reference"
                     and case.reference_models != case.models else str(case.models))
            lines.append(f"| {name} | {prov} | {label} | {med * 1e6:.1f} | {t.min() * 1e6:.1f}–"
                         f"{t.max() * 1e6:.1f} | {case.models / med:,.0f} | {ratio} | "
                         f"{gflops:,.1f} | {100 * gflops / FP32_PEAK_GFLOPS:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", type=int, default=0, help="steps of the timed paper-real run")
    parser.add_argument("--long-budget", type=float, default=45.0,
                        help="seconds after which the long run stops and reports its projection")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny models, any machine (CPU: Triton's interpreter): checks the logic")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU; use --dry-run to check the script on this machine",
              file=sys.stderr)
        return 2
    all_cases = cases(args.dry_run)
    print(table(all_cases, measure(all_cases, 1 if args.dry_run else args.repeats)), flush=True)
    if args.long:
        print("\n" + long_run(args.long, args.long_budget, args.dry_run), flush=True)
    return 0


if __name__ == "__main__":
    if "--dry-run" in sys.argv and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    sys.exit(main())
