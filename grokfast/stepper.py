"""The stepper contract: what every backend provides, which configs may share a launch, and which
backend a name selects.

A backend is a *stepper* over a batch of models that share every shape (the model axis):

    stepper = Stepper(configs, data, device)
    rows = stepper.advance(step0, n_steps, active)   # name → [n_models, n_rows] for recorded steps
    W1, W2 = stepper.params()                         # [n_models, ...] CPU tensors
    stepper.state_dict() / stepper.load_state_dict()  # everything needed to continue bitwise

This module depends only on the config and the errors; the backends import it, and the engine
imports it and (through `stepper_class`, lazily) the backends.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .config import Config
from .errors import GrokfastError, check_choice

BACKENDS = ("auto", "triton", "torch", "reference")

# Fields every model of one launch must share: they fix the data, the shapes or the loop.
SHARED_FIELDS = ("p", "operation", "pairs", "encoding", "train_frac", "n_test", "split_seed",
                 "label_noise", "width", "activation", "loss", "loss_reduction", "loss_dtype",
                 "optimizer", "grad_filter", "filter_window", "filter_type", "filter_warmup",
                 "orthograd", "fixed_norm", "steps", "dtype", "device", "precision", "log_every",
                 "eval_every")


@runtime_checkable
class Stepper(Protocol):
    """A batch of models stepped together; the engine owns everything else (grokfast.engine)."""

    backend: str

    @property
    def n_models(self) -> int: ...

    @property
    def preferred_chunk(self) -> int:
        """Steps per `advance` call the backend runs best at (the engine rounds to log_every)."""

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict[str, np.ndarray]:
        """Run updates step0 … step0+n_steps−1 on the models where `active` (bool [n_models]);
        return the recorded rows, name → [n_models, n_rows]."""

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W1 [n_models, d_in, width], W2 [n_models, width, p] as CPU tensors."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_batch(configs: Sequence[Config]) -> None:
    """Models of one launch must agree on SHARED_FIELDS; say which field differs and what to do."""
    first = configs[0]
    for c in configs[1:]:
        for name in SHARED_FIELDS:
            if getattr(c, name) != getattr(first, name):
                raise GrokfastError(
                    f"models of one launch must share {name!r} ({getattr(first, name)!r} vs "
                    f"{getattr(c, name)!r}); run separate launches for different {name}")


def stepper_class(backend: str, device: str):
    """The stepper class for a backend name ("auto": triton on CUDA, else torch)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        backend = "triton" if device.startswith("cuda") and _triton_usable() else "torch"
    if backend == "reference":
        from .reference import ReferenceStepper
        return ReferenceStepper
    if backend == "torch":
        from .torch_backend import TorchStepper
        return TorchStepper
    from .triton_backend import TritonStepper
    return TritonStepper


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
