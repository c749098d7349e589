"""CPU throughput of the torch backend against the reference loop, measured side by side.

    python bench/bench_cpu.py                       # the table for bench/RESULTS.md (markdown)
    python bench/bench_cpu.py --repeats 7 --threads 1
    pytest bench/bench_cpu.py --benchmark-enable    # the same cases under pytest-benchmark

CI runs this file once as a smoke test (pyproject's addopts pass --benchmark-disable).

Cases: paper-real (p = 11, N = 59 training rows, width 128, GD, MSE) one model; gromov (p = 97,
ordered, concat, 30 % train so N = 2823, width 512, x², MSE, AdamW) one model; paper-real with 16
seeds, batched in one torch stepper against the reference's 16 models stepped one after another.
Each uses its preset's log/eval intervals (100 for paper-real, 10 for gromov), so the timed steps
include the statistics and test evaluations a real run records.

Reported per case and provider: the median wall time per step over the repeats and its spread
(min–max), model-steps/s, the ratio of model-steps/s to the reference's measured in the same run
(providers alternate within each repeat, so a busy machine slows both alike), the same for the
process CPU time (the steadier figure on a shared machine when one thread runs), and the achieved
GFLOP/s of the three GEMMs of a step, 3 · 2·N·width·p per model (the forward H W2 and the backward
Hᵀ dŶ and dŶ W2ᵀ; the gather-based first layer is not a GEMM, and the reference's dense X W1 and
Xᵀ dZ products are not counted), against the CPU's float32 GEMM limit measured in the same run:
MKL on a 2048³ product with the same threads (the nominal-clock peak is no bound: turbo beats it).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from grokfast import Config, make_dataset
from grokfast.backends.registry import make_stepper

PROVIDERS = ("reference", "torch")
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Case:
    config: Config
    models: int       # seeds 0 … models−1 in one stepper
    steps: int        # timed steps per measurement

    @property
    def gemm_flop(self) -> float:
        """FLOP of the three GEMMs of one step of all models."""
        c = self.config
        return 3 * 2 * c.n_train * c.width * c.p * self.models


CASES = {
    "paper-real": Case(Config.preset("paper-real"), models=1, steps=300),
    "gromov": Case(Config.preset("gromov"), models=1, steps=20),
    "paper-real-16-seeds": Case(Config.preset("paper-real"), models=16, steps=300),
}


def setup(case: str, provider: str, steps: int = 0):
    """A stepper of `provider` for `case`, warmed up; returns the timed function (one call runs
    `steps`, by default case.steps, steps of every model)."""
    spec = CASES[case]
    steps = steps or spec.steps
    configs = [spec.config.replace(seed=s) for s in range(spec.models)]
    stepper = make_stepper(provider, configs, make_dataset(spec.config),
                           torch.device("cpu"))
    active = np.ones(spec.models, bool)
    stepper.advance(0, WARMUP_STEPS, active)
    state = {"step": WARMUP_STEPS}

    def run():
        rows = stepper.advance(state["step"], steps, active)
        state["step"] += steps
        return rows

    return run


_MEASURED: dict = {}   # (case, provider) → seconds per step, for the ratio within one session


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_throughput(benchmark, case, provider):
    spec = CASES[case]
    # --benchmark-disable (CI): one short smoke run of the same code, up to a recorded step
    run = setup(case, provider, steps=spec.config.log_every if benchmark.disabled else 0)
    rows = benchmark.pedantic(run, rounds=3, iterations=1)
    assert rows["train_loss"].size and np.isfinite(rows["train_loss"]).all()  # every recorded step
    if benchmark.disabled:
        return
    per_step = benchmark.stats.stats.median / spec.steps
    _MEASURED[case, provider] = per_step
    benchmark.extra_info["model_steps_per_s"] = spec.models / per_step
    benchmark.extra_info["gemm_gflop_per_s"] = spec.gemm_flop / per_step / 1e9
    ref = _MEASURED.get((case, "reference"))
    if ref is not None:
        benchmark.extra_info["ratio_to_reference"] = ref / per_step


# ---------------------------------------------------------------- script: the results table
def gemm_limit(threads: int) -> float:
    """Measured float32 GEMM GFLOP/s of a 2048³ product with `threads` threads (best of 3)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(3))
    finally:
        torch.set_num_threads(old)
    return 2 * 2048 ** 3 / best / 1e9


def _timed(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def measure(repeats: int) -> tuple[dict, dict]:
    """(case, provider) → lists of wall and of process CPU seconds per step, providers
    alternating within each repeat."""
    wall = {(case, prov): [] for case in CASES for prov in PROVIDERS}
    cpu = {key: [] for key in wall}
    runs = {key: setup(*key) for key in wall}
    for _ in range(repeats):
        for case in CASES:
            for prov in PROVIDERS:
                t0, c0 = time.perf_counter(), time.process_time()
                runs[case, prov]()
                wall[case, prov].append((time.perf_counter() - t0) / CASES[case].steps)
                cpu[case, prov].append((time.process_time() - c0) / CASES[case].steps)
    return wall, cpu


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(times: dict, cpu_times: dict, threads: int) -> str:
    gemm = gemm_limit(threads)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores; torch threads {threads}; "
             f"torch {torch.__version__}, triton {triton_version}, Python "
             f"{platform.python_version()}; commit {git_commit()}; load average "
             f"{os.getloadavg()[0]:.1f} at the end",
             f"GEMM limit: MKL sgemm 2048³ measured here with the same threads, {gemm:.0f} "
             f"GFLOP/s", "",
             "| case | provider | models | ms/step (median) | spread (min–max) | model-steps/s "
             "| × reference | CPU ms/step | × reference (CPU) | GEMM GFLOP/s | % of sgemm |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, spec in CASES.items():
        ref, ref_cpu = np.median(times[case, "reference"]), np.median(cpu_times[case, "reference"])
        for prov in PROVIDERS:
            t = np.asarray(times[case, prov])
            med, med_cpu = float(np.median(t)), float(np.median(cpu_times[case, prov]))
            gflops = spec.gemm_flop / med / 1e9
            lines.append(f"| {case} | {prov} | {spec.models} | {med * 1e3:.3f} | "
                         f"{t.min() * 1e3:.3f}–{t.max() * 1e3:.3f} | {spec.models / med:,.0f} | "
                         f"{ref / med:.2f} | {med_cpu * 1e3:.3f} | {ref_cpu / med_cpu:.2f} | "
                         f"{gflops:.2f} | {100 * gflops / gemm:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per case/provider")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the whole run (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(table(*measure(args.repeats), threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
