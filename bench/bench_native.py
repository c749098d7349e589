"""The native chunk loop against today's per-step path, paper-real at 1, 16, 64 and 256 models.

    python bench/bench_native.py                       # the table for bench/RESULTS.md
    python bench/bench_native.py --models 1,64 --repeats 3
    pytest bench/bench_native.py --benchmark-enable

Providers, measured side by side in one run (alternating within each repeat, so a busy machine
slows all alike), all training paper-real seeds 0 … M−1 in one launch:
- `per-step`: the torch backend with the native loop off (native=False): numba forward and
  backward, the loss gradient, the update and the statistics called from Python step by step.
- `native`: the torch backend as the engine picks it: kernels/cpu/loop.py between logged steps.
- `vmap`, `vmap-1t`: the torch.func.vmap ensemble (bench_many_models' anchor; the ratio is taken
  to the better of the two).
- `plain` (1 and 16 models): the reference, plain autograd + torch.optim, its models one after
  another (bench_cpu's anchor): one plain loop, or sixteen sequential ones.
Every torch provider records its history every 100 steps, as a run does; vmap records nothing.
Reported: model-steps/s (median, spread), the ratios to per-step, to the better vmap and to
plain, and the GFLOP/s of the three GEMMs of a model-step as a fraction of the sgemm rate MKL
reaches on a 2048³ product with torch's threads, measured in the same run (bench_cpu.gemm_limit).
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import pytest
import torch

from bench_cpu import gemm_limit, setup as cpu_setup
from bench_many_models import CONFIG, parse_args, setup as many_setup, steps_for

PROVIDERS = ("per-step", "native", "vmap", "vmap-1t", "plain")
PLAIN_CASES = {1: "paper-real", 16: "paper-real-16-seeds"}   # bench_cpu's cases


def provider_steps(provider: str, models: int) -> int:
    """Timed steps per measurement: about 0.1–1 s of work for each provider."""
    if provider == "native":
        return 2 * steps_for(models)
    return steps_for(models) // (10 if provider == "plain" else 1)


def setup(provider: str, models: int, steps: int):
    """A warmed-up runner (one call runs `steps` steps of every model: its argument, fixed at
    setup for plain), or None where the provider is not measured at this size (plain beyond 16
    models)."""
    if provider == "plain":
        if models not in PLAIN_CASES:
            return None
        run = cpu_setup(PLAIN_CASES[models], "reference", steps=steps)
        return lambda _steps: run()
    if provider in ("per-step", "native"):
        return many_setup("torch", models, native=provider == "native")
    return many_setup(provider, models)


def measure(models_list, repeats: int) -> dict:
    """(provider, models) → list of model-steps/s."""
    runs = {(prov, m): setup(prov, m, provider_steps(prov, m)) for m in models_list
            for prov in PROVIDERS}
    runs = {key: fn for key, fn in runs.items() if fn is not None}
    rates = {key: [] for key in runs}
    for _ in range(repeats):
        for (prov, m), fn in runs.items():
            steps = provider_steps(prov, m)
            t0 = time.perf_counter()
            fn(steps)
            rates[prov, m].append(m * steps / (time.perf_counter() - t0))
    return rates


def table(rates: dict, models_list, limit: float) -> str:
    c = CONFIG
    flop = 3 * 2 * c.n_train * c.width * c.p
    med = {key: float(np.median(r)) for key, r in rates.items()}
    lines = [f"paper-real (p = {c.p}, N = {c.n_train}, width {c.width}, {c.dtype}), "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, torch "
             f"threads {torch.get_num_threads()}, sgemm {limit:.0f} GFLOP/s, load average "
             f"{os.getloadavg()[0]:.1f} at the end", "",
             "| models | provider | model-steps/s (median) | spread | × per-step | × best vmap "
             "| × plain | GEMM GFLOP/s | of sgemm |", "|---|---|---|---|---|---|---|---|---|"]
    for m in models_list:
        vmap = max(med["vmap", m], med["vmap-1t", m])
        plain = med.get(("plain", m))
        for prov in PROVIDERS:
            if (prov, m) not in rates:
                continue
            r, x = np.asarray(rates[prov, m]), med[prov, m]
            to_plain = f"{x / plain:.1f}" if plain else "–"
            lines.append(f"| {m} | {prov} | {x:,.0f} | {r.min():,.0f}–{r.max():,.0f} | "
                         f"{x / med['per-step', m]:.2f} | {x / vmap:.2f} | {to_plain} | "
                         f"{x * flop / 1e9:.1f} | {x * flop / 1e9 / limit:.1%} |")
    return "\n".join(lines)


@pytest.mark.parametrize("models", [1, 16])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_native_throughput(benchmark, provider, models):
    steps = 2 if benchmark.disabled else provider_steps(provider, models)
    run = setup(provider, models, steps)
    rows = benchmark.pedantic(run, args=(steps,), rounds=3, iterations=1)
    assert np.isfinite(rows["train_loss"]).all()
    if not benchmark.disabled:
        benchmark.extra_info["model_steps_per_s"] = models * steps / benchmark.stats.stats.median


def main(argv=None) -> int:
    models_list, repeats = parse_args(argv, __doc__)
    rates = measure(models_list, repeats)
    print(table(rates, models_list, gemm_limit(torch.get_num_threads())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
