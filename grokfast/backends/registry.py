"""Which backend a name selects, and the one factory the engine builds steppers with.

The backends import the contract (grokfast.backends.base); this module imports the backends,
lazily, so that naming one never loads the others (Triton, numba).
"""
from __future__ import annotations

from typing import Sequence

import torch

from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.errors import check_choice

from .base import BACKENDS, Stepper


def resolve(backend: str, device: str) -> str:
    """The backend a name runs on ("auto": triton on CUDA where Triton imports, else torch)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if str(device).startswith("cuda") and _triton_usable() else "torch"
    return backend


def stepper_class(backend: str, device: str):
    """The stepper class of a backend name (see resolve)."""
    backend = resolve(backend, device)
    if backend == "reference":
        from .reference import ReferenceStepper
        return ReferenceStepper
    if backend == "torch":
        from .torch.stepper import TorchStepper
        return TorchStepper
    from .triton.stepper import TritonStepper
    return TritonStepper


def make_stepper(backend: str, configs: Sequence[Config], data: Dataset, device, **kw) -> Stepper:
    """A stepper over `configs` on `backend`: the torch backend's factory picks the sharded
    stepper for a launch of many small models (grokfast.backends.torch.make_stepper)."""
    name = resolve(backend, str(device))
    if name == "torch":
        from .torch import make_stepper as torch_stepper
        return torch_stepper(configs, data, device, **kw)
    return stepper_class(name, str(device))(configs, data, device, **kw)


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
