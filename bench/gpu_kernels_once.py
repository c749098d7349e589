"""Every Triton kernel of the engine for a few steps: the program bench/gpu_check.sh runs under
compute-sanitizer (memcheck, racecheck: out-of-bounds accesses and shared-memory races, which
Triton's interpreter cannot see) and under Nsight Compute (ncu).

    python bench/gpu_kernels_once.py --size tiny --steps 2   # sanitizers: tiny, every kernel
    python bench/gpu_kernels_once.py --size real --steps 2   # ncu: paper-real fused, gromov rows

tiny: p = 7, width 16, two models per launch, both regimes, float32 and float64, covering every
kernel (fused; rows, update_grad, update_orth, update_step, update_rescale, stats) and the filter
and optimizer state. real: paper-real in the fused regime and the width-512 gromov preset (30 %
train) in the tiled one, the sizes of the README's goals. Eager launches (no CUDA graphs: a
sanitizer reports per launch). On a machine without CUDA it runs in Triton's interpreter
(TRITON_INTERPRET=1), which is how `bench/gpu_check.sh --dry-run` checks it.
"""
import argparse

import numpy as np
import torch

from grokfast import Config, make_dataset
from grokfast.backends.triton.stepper import TritonStepper


def runs(size: str) -> list:
    """(label, config, regime) of each run."""
    if size == "real":
        return [("paper-real", Config.preset("paper-real"), "fused"),
                ("gromov-512", Config.preset("gromov", train_frac=0.3), "tiled")]
    tiny = Config(p=7, width=16, n_test=7, log_every=1, eval_every=1)
    stateful = tiny.replace(optimizer="adam", lr=0.01, grad_filter="ema", orthograd=True,
                            fixed_norm=True)
    window = tiny.replace(dtype="float64", optimizer="sgd", momentum=0.9, grad_filter="ma",
                          filter_window=2, loss="cross_entropy")
    return [(f"{label}-{regime}", c, regime)
            for label, c in (("gd", tiny), ("adam-ema-orthograd-fixednorm", stateful),
                             ("float64-sgd-ma-ce", window))
            for regime in ("fused", "tiled")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for label, c, regime in runs(args.size):
        c = c.replace(device=device.type)
        models = [c, c.replace(seed=c.seed + 1)]
        st = TritonStepper(models, make_dataset(c), device, regime=regime, cuda_graphs=False)
        rows = st.advance(0, args.steps, np.ones(len(models), dtype=bool))
        if device.type == "cuda":
            torch.cuda.synchronize()
        loss = rows["train_loss"][:, 0]
        if not np.isfinite(loss).all():
            raise SystemExit(f"error: {label}: non-finite training loss {loss}")
        print(f"ok: {label} ({regime}, {args.steps} steps, {len(models)} models on {device.type})")


if __name__ == "__main__":
    main()
