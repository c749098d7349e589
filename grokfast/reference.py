"""`grokfast.reference.train`: the plain autograd + torch.optim loop, as `grokfast.train` takes it.

The reference implementation itself is grokfast.backends.reference (one module, which tests and
benchmarks import); this is its public door, the same arguments and Result as grokfast.train with
the backend fixed.
"""
from __future__ import annotations

from grokfast.backends.reference import (
    ReferenceStepper,
    TwoLayerNet,
    make_optimizer,
    stack_rows,
)
from grokfast.config import Config
from grokfast.engine import train as _train
from grokfast.errors import GrokfastError


def train(config: Config, seeds=None, **options):
    """Train with the reference loop. Same arguments and result as grokfast.train (backend fixed)."""
    backend = options.pop("backend", "reference")
    if backend != "reference":
        raise GrokfastError(f"grokfast.reference.train always runs the reference loop, not "
                            f"backend={backend!r}: call grokfast.train(config, backend={backend!r})")
    return _train(config, seeds=seeds, backend="reference", **options)


__all__ = ["train", "ReferenceStepper", "TwoLayerNet", "make_optimizer", "stack_rows"]
