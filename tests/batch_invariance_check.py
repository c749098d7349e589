"""Batch invariance, checked in this process: model i of a launch == the same model alone, bitwise.

Run as a script by tests/test_batch_invariance.py in subprocesses under MKL code paths that differ
between machines (MKL_ENABLE_INSTRUCTIONS, MKL_CBWR unset) and 1 or 2 threads. Before grokfast is
imported, the script runs a matmul with torch, as a user's session would, so that nothing grokfast
could set globally at import time would still take effect. Prints one line per case and exits 1 on
the first mismatch.

    python tests/batch_invariance_check.py THREADS
"""
import sys

import numpy as np
import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
torch.randn(64, 64) @ torch.randn(64, 64)   # MKL initialised before grokfast is imported

import grokfast  # noqa: E402
import grokfast.backends.torch.paths as torch_paths  # noqa: E402
from grokfast import Config  # noqa: E402

# paper-real's shapes (p = 11, width 128, 59 train pairs: odd per-model offsets of the [59, 11]
# logits), both dtypes; Adam + EMA + ⊥Grad; and a size where ATen and MKL use two threads.
PAPER = Config.preset("paper-real").replace(steps=24, log_every=1, eval_every=4)
CASES = {
    "paper-real-float32": (PAPER, dict(lr=[1.0, 0.7, 1.3, 0.9],
                                     weight_decay=[1e-4, 3e-4, 0.0, 1e-3])),
    "paper-real-float64": (PAPER.replace(dtype="float64"), dict(lr=[1.0, 0.5, 1.2])),
    "concat-quadratic-adamw-ema-orthograd": (
        Config(p=13, pairs="ordered", encoding="concat", n_test=None, train_frac=0.5, width=48,
               activation="quadratic", optimizer="adamw", lr=1e-2, grad_filter="ema",
               orthograd=True, steps=16, log_every=1, eval_every=2),
        dict(lr=[1e-2, 5e-3, 2e-2])),
    "threaded-size-sgd-fixed-norm": (
        Config(p=47, pairs="ordered", encoding="concat", n_test=None, train_frac=0.5, width=384,
               optimizer="sgd", lr=0.5, momentum=0.9, fixed_norm=True, steps=3, log_every=1,
               eval_every=1),
        dict(lr=[0.5, 0.2])),
    # 64 models: threads over models (ShardedStepper, shards of ≥ 8), checked at shard edges
    "paper-real-64-models-sharded": (PAPER.replace(steps=12, eval_every=6),
                                     dict(lr=[1.0 + 0.01 * i for i in range(64)])),
}
ALONE = {"paper-real-64-models-sharded": (0, 31, 32, 63)}


def run(configs):
    return grokfast.engine.run(configs, backend="torch")


def main() -> int:
    auto_max_work = torch_paths.NUMBA_MAX_WORK
    for kernel in ("auto", "mkl"):  # auto: portable numerics (numba kernels at every size)
        torch_paths.NUMBA_MAX_WORK = auto_max_work if kernel == "auto" else 0
        if check(kernel):
            return 1
    return 0


def check(kernel: str) -> int:
    for name, (base, scalars) in CASES.items():
        n = len(next(iter(scalars.values())))
        numerics = "host" if kernel == "mkl" else "portable"  # MKL: the host-tuned path
        configs = [base.replace(seed=10 + i, numerics=numerics,
                                **{k: v[i] for k, v in scalars.items()}) for i in range(n)]
        batch = run(configs)
        for i in ALONE.get(name, range(n)):
            ci = configs[i]
            alone = run([ci])[0]
            for k in grokfast.STAT_NAMES:
                a, b = np.asarray(batch[i].history[k]), np.asarray(alone.history[k])
                if not np.array_equal(a, b, equal_nan=True):
                    bad = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))[0]
                    print(f"MISMATCH {name} ({kernel}): model {i} of {n}, history {k!r} row {bad}: "
                          f"{a[bad]!r} in the batch, {b[bad]!r} alone")
                    return 1
            for layer in ("W1", "W2"):
                if not torch.equal(torch.as_tensor(batch[i].params[layer]),
                                   torch.as_tensor(alone.params[layer])):
                    print(f"MISMATCH {name} ({kernel}): model {i} of {n}, final {layer}")
                    return 1
        print(f"ok {name} ({kernel}): {n} models, threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
