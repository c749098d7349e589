"""Portable against host numerics on the torch backend (CPU), measured side by side in one run.

    python bench/bench_numerics.py                    # the table for bench/RESULTS.md
    python bench/bench_numerics.py --repeats 5 --cases paper-real-1,gromov-1
    pytest bench/bench_numerics.py --benchmark-enable

Cases: paper-real at 1 and 64 models, gromov (width 512, N = 2823, p = 97, AdamW, x²) at 1 and 8
models; each with its preset's log / eval intervals, so the timed steps include the statistics
and evaluations a real run records. Providers: numerics "portable" (the default: numba kernels at
every size, written-order reductions, unfused updates) and "host" (the host-tuned paths: the
reassociated numba forward for small models, MKL's GEMMs for large ones, torch's sums and fused
updates). They alternate within each repeat (a busy machine slows both alike); reported: the median
model-steps/s over the repeats (wall clock), its spread, and portable / host.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pytest
import torch

from grokfast import Config, make_dataset
from grokfast.backends.torch import make_stepper

PROVIDERS = ("portable", "host")
CASES = {  # name → (config, models, timed steps per measurement)
    "paper-real-1": (Config.preset("paper-real"), 1, 2000),
    "paper-real-64": (Config.preset("paper-real"), 64, 200),
    "gromov-1": (Config.preset("gromov"), 1, 10),
    "gromov-8": (Config.preset("gromov"), 8, 3),
}


def setup(case: str, provider: str):
    """A warmed-up stepper of `case` with numerics `provider`; returns (run, model-steps per call)."""
    return setup_case(*CASES[case], provider)


def setup_case(config, models: int, steps: int, provider: str):
    """A warmed-up stepper of `models` seeds of `config` with numerics `provider` (make_stepper's
    threads and shards), whose run() advances `steps` steps; returns (run, model-steps per call)."""
    configs = [config.replace(seed=s, numerics=provider) for s in range(models)]
    stepper = make_stepper(configs, make_dataset(config), torch.device("cpu"))
    active = np.ones(models, bool)
    stepper.advance(0, 2, active)
    state = {"step": 2}

    def run():
        stepper.advance(state["step"], steps, active)
        state["step"] += steps
    return run, models * steps


SETTLE = 0.1   # s of quiet before each timed run (measure)


def measure(runs: dict, repeats: int, settle: float = SETTLE) -> tuple[dict, dict]:
    """Model-steps/s of each provider's (run, model-steps) over `repeats` rounds, the providers
    alternating within each round: (wall-clock rates, process-CPU-time rates), provider → list.
    Each timed run starts after `settle` seconds of sleep, so that it finds the cores as a run
    of its own would: torch's OpenMP workers (libgomp's default wait policy) spin on a core for
    ~10 ms after the host path's last parallel region, and without the pause that spinning
    took the second core from the portable path's threads for its first steps (measured on
    the Zen 4: gromov-1 steps of 10–12 ms for 2–4 steps after each host run, 6.4–7.0 after;
    bench/RESULTS.md, eighth session). The portable path's pool threads block instead of
    spinning, so the host path never paid the same."""
    wall, cpu = {p: [] for p in runs}, {p: [] for p in runs}
    for _ in range(repeats):
        for p, (run, work) in runs.items():
            time.sleep(settle)
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[p].append(work / (time.perf_counter() - t0))
            cpu[p].append(work / (time.process_time() - c0))
    return wall, cpu


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ["paper-real-1", "gromov-1"])
def test_numerics_bench(benchmark, case, provider):
    run, _ = setup(case, provider)
    benchmark(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.2f}")
    print("| case | portable model-steps/s | host model-steps/s | portable / host (spread) |")
    print("|---|---|---|---|")
    for case in args.cases.split(","):
        rates, _ = measure({p: setup(case, p) for p in PROVIDERS}, args.repeats)
        med = {p: float(np.median(v)) for p, v in rates.items()}
        ratios = np.array(rates["portable"]) / np.array(rates["host"])
        print(f"| {case} | {med['portable']:,.0f} | {med['host']:,.0f} | "
              f"{med['portable'] / med['host']:.2f} ({ratios.min():.2f}–{ratios.max():.2f}) |",
              flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
