"""Many-model CPU throughput: paper-real seeds in one launch against the torch.func.vmap loop.

    python bench/bench_many_models.py                  # the table for bench/RESULTS.md
    python bench/bench_many_models.py --models 1,64 --repeats 3
    pytest bench/bench_many_models.py --benchmark-enable

Providers, measured side by side in one run (alternating within each repeat, so a busy machine
slows all alike):
- `vmap`, `vmap-1t`: what a skilled user writes instead, torch.func.vmap(grad) of the paper-real
  loss over stacked W1, W2 with the dense inputs X, then the GD + weight-decay update in place:
  three lines, no statistics (less work than the engine, which records its history every 100
  steps); with torch's threads (all cores) and with one thread. On a busy machine the two-thread
  loop collapses (OpenMP threads waiting on each other), so the ratio is taken to the better one.
- `torch-mkl-1t`: the torch backend's path before the many-model work (MKL GEMMs, one thread, no
  threads over models), forced with kernel="mkl", shards=1 (numerics "host").
- `torch`: the torch backend as the engine picks it (numba kernels, threads over models).
Reported: model-steps/s (median over repeats, and the spread), the ratio to the better vmap, and
the GFLOP/s of the three GEMMs of a model-step (3 · 2·N·width·p).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pytest
import torch

from grokfast import Config, make_dataset
from grokfast.backends.torch import make_stepper
from grokfast.model import init_params

PROVIDERS = ("vmap", "vmap-1t", "torch-mkl-1t", "torch")
CONFIG = Config.preset("paper-real")


def steps_for(models: int) -> int:
    """Timed steps per measurement: about 0.2–1 s of work."""
    return max(20, 6000 // models)


def setup(provider: str, models: int, config: Config = CONFIG, **stepper_kw):
    """A warmed-up runner: one call does `steps` GD steps of `models` paper-real seeds
    (stepper_kw: more make_stepper options for the torch providers)."""
    configs = [config.replace(seed=s) for s in range(models)]
    data = make_dataset(config)
    if provider.startswith("vmap"):
        return _vmap_loop(configs, data, threads=1 if provider == "vmap-1t" else None)
    kw = dict(kernel="mkl", shards=1) if provider == "torch-mkl-1t" else {}
    if kw:  # MKL's GEMMs are the host-tuned numerics
        configs = [c.replace(numerics="host") for c in configs]
    stepper = make_stepper(configs, data, torch.device("cpu"), **kw, **stepper_kw)
    active = np.ones(models, bool)
    stepper.advance(0, 3, active)
    state = {"step": 3}

    def run(steps: int):
        rows = stepper.advance(state["step"], steps, active)
        state["step"] += steps
        return rows

    return run


def _vmap_loop(configs, data, threads=None):
    c = configs[0]
    dt = torch.float32 if c.dtype == "float32" else torch.float64
    X = data.inputs(data.train_pairs, dtype=dt)
    Y = torch.nn.functional.one_hot(data.train_labels, c.p).to(dt)
    W1, W2 = (torch.stack(t) for t in zip(*(init_params(ci) for ci in configs)))
    lr, wd = c.lr, c.weight_decay

    def loss(w1, w2):
        return ((torch.relu(X @ w1) @ w2 - Y) ** 2).mean()

    grad = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))

    def run(steps: int):
        old = torch.get_num_threads()
        torch.set_num_threads(threads or old)
        try:
            with torch.no_grad():
                for _ in range(steps):
                    g1, g2 = grad(W1, W2)
                    W1.sub_(lr * (g1 + wd * W1))
                    W2.sub_(lr * (g2 + wd * W2))
        finally:
            torch.set_num_threads(old)
        return {"train_loss": np.asarray([float(loss(W1[0], W2[0]))])}

    run(3)
    return run


def measure(models_list, repeats: int) -> dict:
    """(provider, models) → list of model-steps/s."""
    runs = {(prov, m): setup(prov, m) for m in models_list for prov in PROVIDERS}
    rates = {key: [] for key in runs}
    for _ in range(repeats):
        for m in models_list:
            for prov in PROVIDERS:
                steps = steps_for(m)
                t0 = time.perf_counter()
                runs[prov, m](steps)
                rates[prov, m].append(m * steps / (time.perf_counter() - t0))
    return rates


def table(rates: dict, models_list) -> str:
    c = CONFIG
    flop = 3 * 2 * c.n_train * c.width * c.p
    lines = [f"paper-real (p = {c.p}, N = {c.n_train}, width {c.width}, {c.dtype}), torch "
             f"{torch.__version__}, torch threads {torch.get_num_threads()}, "
             f"load average {os.getloadavg()[0]:.1f} at the end", "",
             "| models | provider | model-steps/s (median) | spread | × best vmap | GEMM GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for m in models_list:
        base = max(np.median(rates["vmap", m]), np.median(rates["vmap-1t", m]))
        for prov in PROVIDERS:
            r = np.asarray(rates[prov, m])
            med = float(np.median(r))
            lines.append(f"| {m} | {prov} | {med:,.0f} | {r.min():,.0f}–{r.max():,.0f} | "
                         f"{med / base:.2f} | {med * flop / 1e9:.1f} |")
    return "\n".join(lines)


@pytest.mark.parametrize("models", [1, 64])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_many_models_throughput(benchmark, provider, models):
    run = setup(provider, models)
    steps = 2 if benchmark.disabled else steps_for(models)
    rows = benchmark.pedantic(run, args=(steps,), rounds=3, iterations=1)
    assert np.isfinite(rows["train_loss"]).all()
    if not benchmark.disabled:
        benchmark.extra_info["model_steps_per_s"] = models * steps / benchmark.stats.stats.median


def parse_args(argv, doc: str) -> tuple[list, int]:
    """--models (comma-separated counts) and --repeats of a many-model bench script: (models, repeats)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--models", default="1,16,64,256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return [int(m) for m in args.models.split(",")], args.repeats


def main(argv=None) -> int:
    models_list, repeats = parse_args(argv, __doc__)
    print(table(measure(models_list, repeats), models_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
