"""The `torch` backend: hand-derived gradients for every model of a launch at once.

stepper.py (TorchStepper: the protocol, the forward / backward on numba or MKL, the update) over
its parts: buffers.py (its setup: index tensors, θ, the gradient, every buffer a step writes),
paths.py (code paths chosen by size), loss.py (∂L/∂Ŷ), stats.py (reductions, ⊥Grad, fixed norm,
statistics rows), optim.py (GD, SGD, Adam, AdamW), grad_filters.py (Grokfast EMA / MA), native.py
(the chunk loop in one numba call), split.py (a large model's kernels over the threads);
sharded.py (a launch of many small models cut into shards stepped by a thread pool).
`make_stepper` is the backend's factory: it picks the sharded stepper where it pays.
"""
from __future__ import annotations

from typing import Optional, Sequence

from grokfast.config import Config
from grokfast.data import Dataset

from .paths import shard_count
from .sharded import ShardedStepper
from .stepper import TorchStepper


def make_stepper(configs: Sequence[Config], data: Dataset, device, *, shards: Optional[int] = None,
                 **kw):
    """A TorchStepper over `configs`, or a ShardedStepper of several when `shards` (default:
    paths.shard_count by size and threads) is more than one. kw: TorchStepper's path options."""
    configs = list(configs)
    n = shard_count(configs, device, shards, kw.get("threads"))
    if n > 1:
        return ShardedStepper(configs, data, device, n, **kw)
    return TorchStepper(configs, data, device, **kw)


__all__ = ["TorchStepper", "ShardedStepper", "make_stepper"]
