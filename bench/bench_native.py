"""The native chunk loop against today's per-step path, paper-real at 1, 16, 64 and 256 models.

    python bench/bench_native.py                       # the table for bench/RESULTS.md
    python bench/bench_native.py --models 1,64 --repeats 3
    python bench/bench_native.py --breakdown           # CPU µs per step, one model
    pytest bench/bench_native.py --benchmark-enable

Providers, measured side by side in one run (alternating within each repeat, so a busy machine
slows all alike), all training paper-real seeds 0 … M−1 in one launch:
- `per-step`: the torch backend with the native loop off (native=False): numba forward and
  backward, the loss gradient, the update and the statistics called from Python step by step.
- `native`: the torch backend as the engine picks it: kernels/cpu/loop.py, one call per chunk.
- `vmap`, `vmap-1t`: the torch.func.vmap ensemble (bench_many_models' anchor; the ratio is taken
  to the better of the two).
- `plain` (1 and 16 models): the reference, plain autograd + torch.optim, its models one after
  another (bench_cpu's anchor): one plain loop, or sixteen sequential ones.
Every torch provider records its history every 100 steps, as a run does; vmap records nothing.
Reported: model-steps/s (median, spread), the ratios to per-step, to the better vmap and to
plain, and the GFLOP/s of the three GEMMs of a model-step as a fraction of the sgemm rate MKL
reaches on a 2048³ product with torch's threads, measured in the same run (bench_cpu.gemm_limit),
and of the rate the portable kernels' FMA register tile reaches on L1-resident operands on as many
threads (bench_fma.fma_limit: the physical limit of these products; the header gives it on one
thread too, the bound of a lone model's native loop, which runs on one); and model-steps per
second of process CPU time (both threads), steadier under other load.
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
from bench_fma import describe, fma_limit
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


def measure(models_list, repeats: int, cpu: dict = None) -> dict:
    """(provider, models) → list of model-steps/s (wall); `cpu`, when given, gets the same
    keys → model-steps per second of process CPU time (all threads; less disturbed by other
    load on a shared machine)."""
    runs = {(prov, m): setup(prov, m, provider_steps(prov, m)) for m in models_list
            for prov in PROVIDERS}
    runs = {key: fn for key, fn in runs.items() if fn is not None}
    rates = {key: [] for key in runs}
    cpu = {} if cpu is None else cpu
    for _ in range(repeats):
        for (prov, m), fn in runs.items():
            steps = provider_steps(prov, m)
            t0, c0 = time.perf_counter(), time.process_time()
            fn(steps)
            t1, c1 = time.perf_counter(), time.process_time()
            rates[prov, m].append(m * steps / (t1 - t0))
            cpu.setdefault((prov, m), []).append(m * steps / max(c1 - c0, 1e-9))
    return rates


def breakdown(steps: int = 3000, repeats: int = 3) -> str:
    """Process CPU time per step of one paper-real model, per-step path against the native loop,
    with the preset's history every 100 steps and every 1 000 (min of `repeats`, alternating)."""
    lines = ["| history every | per-step path | native loop | per-step ÷ native |",
             "|---|---|---|---|"]
    for every in (100, 1000):
        config = CONFIG.replace(log_every=every, eval_every=every)
        runs = {prov: many_setup("torch", 1, config, native=prov == "native")
                for prov in ("per-step", "native")}
        best = {prov: float("inf") for prov in runs}
        for _ in range(repeats):
            for prov, fn in runs.items():
                c0 = time.process_time()
                fn(steps)
                best[prov] = min(best[prov], (time.process_time() - c0) / steps * 1e6)
        lines.append(f"| {every} | {best['per-step']:.1f} µs | {best['native']:.1f} µs | "
                     f"{best['per-step'] / best['native']:.2f} |")
    return "\n".join(lines)


def table(rates: dict, models_list, limit: float, cpu: dict = None, fma: dict = None) -> str:
    """The markdown table; limit: the sgemm GFLOP/s, fma: threads → bench_fma.fma_limit (the
    column and header line are left out without it)."""
    c = CONFIG
    T = torch.get_num_threads()
    peak = (fma or {}).get(T)
    flop = 3 * 2 * c.n_train * c.width * c.p
    med = {key: float(np.median(r)) for key, r in rates.items()}
    lines = [f"paper-real (p = {c.p}, N = {c.n_train}, width {c.width}, {c.dtype}), "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, torch "
             f"threads {torch.get_num_threads()}, sgemm {limit:.0f} GFLOP/s, load average "
             f"{os.getloadavg()[0]:.1f} at the end"]
    if peak:
        lines.append("FMA tile peak (bench_fma.fma_limit): " + describe(fma))
    lines += ["", "| models | provider | model-steps/s (median) | spread | × per-step "
              "| × best vmap | × plain | GEMM GFLOP/s | of sgemm | "
              + ("of FMA peak | " if peak else "")
              + "per CPU-s (median) | × per-step (CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else "")]
    cmed = {key: float(np.median(r)) for key, r in (cpu or {}).items()}
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
                         f"{x * flop / 1e9:.1f} | {x * flop / 1e9 / limit:.1%} | "
                         + (f"{x * flop / 1e9 / peak:.1%} | " if peak else "")
                         + (f"{cmed[prov, m]:,.0f} | {cmed[prov, m] / cmed['per-step', m]:.2f} |"
                            if (prov, m) in cmed else "– | – |"))
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--breakdown" in argv:
        print(breakdown())
        return 0
    models_list, repeats = parse_args(argv, __doc__)
    cpu = {}
    rates = measure(models_list, repeats, cpu)
    T = torch.get_num_threads()
    fma = {t: fma_limit(t) for t in sorted({1, T})}
    print(table(rates, models_list, gemm_limit(T), cpu, fma))
    return 0


if __name__ == "__main__":
    sys.exit(main())
