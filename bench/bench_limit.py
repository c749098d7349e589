"""The torch backend against the machine's own limit: sgemm rate and training steps/s, side by side.

    python bench/bench_limit.py                     # the table for bench/RESULTS.md
    python bench/bench_limit.py --repeats 5 --cases gromov-1,power-1
    pytest bench/bench_limit.py --benchmark-enable

One run measures the practical limit, torch.mm of two float32 [S, S] matrices (S = --sgemm-size)
on one thread and on all of torch's intra-op threads, then each case with numerics "portable"
and "host" alternating within every repeat (a busy machine slows both alike), each timed run
after bench_numerics.SETTLE seconds of sleep (the other provider's threads idle: torch's OpenMP
workers spin ~10 ms after the host path's last parallel region and took a core from the
portable path's first steps before this pause). Cases: gromov and
power (p = 97, width 512, N = 2823) with 1 and 8 models, paper-real with 1 and 64 models, as
their presets run them (statistics and evaluations included; make_stepper picks the threads).
Each timed run is a whole number of the preset's evaluation periods (gromov 10 steps, power 50,
paper-real 100), so every window holds its logged and evaluated steps in the proportion a run
has (8-step gromov windows held one evaluation in 8 steps, 2-step ones none in most windows, and
8-step power windows none at all). Reported per case: the median model-steps/s over the repeats
(wall clock), the GEMM-shaped work
of a step (three products of 2·N·width·p FLOP each) at that rate in GFLOP/s, its fraction of the
same run's all-thread sgemm rate, the same work per second of process CPU time (all threads
summed: the efficiency per core, less sensitive than wall time to other processes on a shared
machine), portable / host (wall) with the spread of the per-repeat ratios, and portable's
fraction of the all-thread rate of the portable kernels' FMA register tile on L1-resident
operands (bench_fma.fma_limit, measured in the same run: the physical limit of its products),
and portable's fraction of "the sgemm beside it": two all-thread torch.mm calls timed as a third
provider in the same alternation (the median of their rates), the limit at the moments the case
ran. The VM this was built on drifts by ±20 % over minutes (neighbours on the same cores and
caches): the run's opening best-of-5 sgemm is the conservative limit, the one beside the case
tells a slow moment of the machine from a slow kernel.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pytest
import torch

from bench_fma import fma_limit
from bench_numerics import PROVIDERS, SETTLE, measure, setup_case
from grokfast import Config

CASES = {  # name → (config, models, timed steps per measurement: whole evaluation periods)
    "gromov-1": (Config.preset("gromov"), 1, 10),
    "gromov-8": (Config.preset("gromov"), 8, 10),
    "power-1": (Config.preset("power"), 1, 50),
    "power-8": (Config.preset("power"), 8, 50),
    "paper-real-1": (Config.preset("paper-real"), 1, 2000),
    "paper-real-64": (Config.preset("paper-real"), 64, 200),
}


def step_gflop(config: Config) -> float:
    """GFLOP of the three GEMM-shaped products of one model-step (Ŷ = H W2, Hᵀ dŶ, dŶ W2ᵀ)."""
    return 3 * 2 * config.n_train * config.width * config.p / 1e9


def sgemm_rate(size: int, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of torch.mm on float32 [size, size] matrices with `threads` threads (best of
    `repeats`: the practical limit)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * size ** 3 / best / 1e9


def sgemm_run(size: int, calls: int = 2):
    """(run, GFLOP per run) of `calls` torch.mm of float32 [size, size] on torch's threads, for
    measure() beside a case's providers: the limit at the same moments as the case's runs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)

    def run():
        for _ in range(calls):
            torch.mm(a, b, out=out)
    return run, calls * 2 * size ** 3 / 1e9


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ["power-1"])
def test_limit_bench(benchmark, case, provider):
    run, _ = setup_case(*CASES[case][:2], 1, provider)
    benchmark(run)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--sgemm-size", type=int, default=1536)
    ap.add_argument("--settle", type=float, default=SETTLE,
                    help="seconds of sleep before each timed run (0: the runs back to back)")
    args = ap.parse_args()
    T = torch.get_num_threads()
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {T} threads, "
          f"load {os.getloadavg()[0]:.2f}, settle {args.settle} s")
    limit = {1: sgemm_rate(args.sgemm_size, 1), T: sgemm_rate(args.sgemm_size, T)}
    print(f"sgemm {args.sgemm_size}³: {limit[1]:.1f} GFLOP/s on 1 thread, {limit[T]:.1f} on {T}")
    fma = {t: fma_limit(t) for t in sorted({1, T})}
    print(f"FMA tile peak (bench_fma.fma_limit): {fma[1]:.1f} GFLOP/s on 1 thread, {fma[T]:.1f} "
          f"on {T}")
    print("| case | portable model-steps/s | GFLOP/s | of sgemm | GFLOP per CPU-s | host "
          "model-steps/s | GFLOP/s | of sgemm | GFLOP per CPU-s | portable / host (spread) | "
          "portable of FMA peak | portable of the sgemm beside it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        config, models, steps = CASES[case]
        runs = {p: setup_case(config, models, steps, p) for p in PROVIDERS}
        rates, cpu = measure({**runs, "sgemm": sgemm_run(args.sgemm_size)}, args.repeats,
                             args.settle)
        beside = float(np.median(rates.pop("sgemm")))
        med = {p: float(np.median(v)) for p, v in rates.items()}
        gf = {p: med[p] * step_gflop(config) for p in PROVIDERS}
        ratios = np.array(rates["portable"]) / np.array(rates["host"])
        cells = " | ".join(f"{med[p]:,.1f} | {gf[p]:.1f} | {gf[p] / limit[T]:.0%} | "
                           f"{np.median(cpu[p]) * step_gflop(config):.1f}" for p in PROVIDERS)
        print(f"| {case} | {cells} | {med['portable'] / med['host']:.2f} "
              f"({ratios.min():.2f}–{ratios.max():.2f}) | {gf['portable'] / fma[T]:.0%} | "
              f"{gf['portable'] / beside:.0%} of {beside:.0f} |",
              flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
