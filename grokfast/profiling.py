"""NVTX ranges for Nsight Systems, with stable names, free when no GPU profiler listens.

    with nvtx_range("step"): ...

Range names used by the package: step, forward, backward, update, statistics, evaluation, logging,
checkpoint. On a machine without CUDA the ranges are no-ops (the code path still runs).
"""
from __future__ import annotations

import contextlib

import torch

try:
    import nvtx as _nvtx
except ImportError:  # nvtx is a declared dependency; tolerate its absence anyway
    _nvtx = None

_ENABLED = _nvtx is not None and torch.cuda.is_available()
DOMAIN = "grokfast"


def nvtx_range(name: str):
    """A context manager marking `name` in the grokfast NVTX domain (no-op without CUDA)."""
    if _ENABLED:
        return _nvtx.annotate(name, domain=DOMAIN)
    return contextlib.nullcontext()
