"""Adam / AdamW on the CPU: the update alone at gromov size, and a paper-real-shaped AdamW run on
the per-step path against the native chunk loop.

    python bench/bench_adam.py                  # both tables
    python bench/bench_adam.py --repeats 9
    pytest bench/bench_adam.py --benchmark-enable

Update alone (one model, gromov's θ: p = 97, concat, width 512, P = 148 992, float32), one AdamW
step of grokfast.backends.torch.optim.Adam per call, providers:
- `numba`: portable, the one-pass kernel (kernels/cpu/adam.py);
- `torch-ops`: portable, the same operations as separate torch ops (the per-step path before
  the kernel: its `adam_kernel` switched off; torch's sqrt);
- `host`: numerics "host", torch.optim's fused ops (addcmul_, lerp_, addcdiv_).
Run (paper-real with optimizer AdamW, lr 1e-3, weight decay 1, one model, history every 100 steps
as a run records it), providers `per-step` (native=False) and `native` (the chunk loop), and
the same two on paper-real itself (GD) as anchors, `per-step-gd` and `native-gd`.
Each repeat runs every provider once, alternating, so a busy machine slows all alike. Reported:
the median and spread over repeats of process CPU time per step (time.process_time: every
thread of the process, steadier than wall time on a shared machine), and the ratio to the first
provider of the table.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pytest
import torch

from grokfast import Config, make_dataset
from grokfast.backends.torch import TorchStepper
from grokfast.backends.torch.optim import make_optimizer

GROMOV = Config.preset("gromov")
RUN = Config.preset("paper-real").replace(optimizer="adamw", lr=1e-3, weight_decay=1.0)
UPDATE = ("torch-ops", "numba", "host")
LOOP = ("per-step", "native", "per-step-gd", "native-gd")
STEPS = {"torch-ops": 200, "numba": 200, "host": 200, "per-step": 5000, "native": 20000,
         "per-step-gd": 5000, "native-gd": 20000}


def setup(provider: str):
    """A warmed-up runner: one call does STEPS[provider] steps of the provider."""
    if provider in UPDATE:
        c = GROMOV.replace(numerics="host" if provider == "host" else "portable")
        P = c.d_in * c.width + c.width * c.p
        gen = torch.Generator().manual_seed(0)
        theta = torch.randn(1, P, generator=gen)
        grads = torch.randn(4, 1, P, generator=gen)
        opt = make_optimizer([c], theta, torch.empty_like(theta), torch.empty_like(theta))
        if provider == "torch-ops":
            opt.adam_kernel = None
        assert (opt.adam_kernel is not None) == (provider == "numba")
        sched = opt.schedule(0, STEPS[provider])

        def run():
            for k, s in enumerate(sched):
                opt.step(theta, grads[k % 4], s, k)     # AdamW leaves g as it is
        run()
        return run
    c = Config.preset("paper-real") if provider.endswith("-gd") else RUN
    native = provider.startswith("native")
    st = TorchStepper([c], make_dataset(c), torch.device("cpu"), native=native)
    assert (st.native is not None) == native
    ones, state = np.ones(1, bool), {"step": 0}

    def run():
        n = STEPS[provider]
        st.advance(state["step"], n, ones)
        state["step"] += n
    run()
    return run


def measure(providers, repeats: int) -> dict:
    """provider → process CPU seconds per step of each repeat."""
    runs = {p: setup(p) for p in providers}
    times = {p: [] for p in providers}
    for _ in range(repeats):
        for p in providers:
            t0 = time.process_time()
            runs[p]()
            times[p].append((time.process_time() - t0) / STEPS[p])
    return times


def table(times: dict) -> str:
    first = np.median(next(iter(times.values())))
    lines = ["| provider | CPU µs / step (median) | spread | ratio to the first |",
             "|---|---|---|---|"]
    for p, t in times.items():
        med = np.median(t)
        lines.append(f"| {p} | {med * 1e6:.1f} | {(max(t) - min(t)) * 1e6:.1f} | "
                     f"{first / med:.2f}× |")
    return "\n".join(lines)


@pytest.mark.parametrize("provider", UPDATE + LOOP)
def test_bench_adam(benchmark, provider):
    benchmark(setup(provider))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"AdamW update alone, gromov size, float32, {torch.__version__}, 1 thread")
    print(table(measure(UPDATE, args.repeats)))
    print("\npaper-real-shaped AdamW run, one model")
    print(table(measure(LOOP, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
