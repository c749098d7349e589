"""NVTX ranges and the CUDA profiler capture window for Nsight Systems, free when nothing listens.

    with nvtx_range("step"): ...

Range names (domain "grokfast"), stable across releases:

* engine (grokfast/engine.py): ``step`` (one chunk of training steps, stepper.advance),
  ``evaluation`` (reading a chunk's statistics: divergence, milestones, early stop; the final
  evaluation of θ), ``logging`` (streaming the history, events, progress bar), ``checkpoint``
  (writing a checkpoint);
* inside the reference stepper (grokfast/reference.py), per training step: ``forward``, ``backward``,
  ``update`` (filters, ⊥Grad, optimizer step, fixed norm) and ``statistics``.

The ranges are emitted when CUDA is available, or on any machine with ``GROKFAST_NVTX=1`` in the
environment (Nsight Systems traces CPU-only processes too); otherwise they are no-ops and the code
path still runs. ``profiler_start``/``profiler_stop`` wrap cudaProfilerStart/Stop, so that
``nsys profile --capture-range=cudaProfilerApi`` records only the window ``--profile-steps A:B``.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import nvtx as _nvtx
except ImportError:  # nvtx is a declared dependency; tolerate its absence anyway
    _nvtx = None

DOMAIN = "grokfast"
RANGE_NAMES = ("step", "forward", "backward", "update", "statistics", "evaluation", "logging",
               "checkpoint")
_ENABLED = _nvtx is not None and (torch.cuda.is_available() or os.environ.get("GROKFAST_NVTX") == "1")
_NULL = contextlib.nullcontext()
_recorded = None  # list of range names while record_ranges() is active (tests)


def nvtx_range(name: str):
    """A context manager marking `name` in the grokfast NVTX domain (no-op when disabled)."""
    if _recorded is not None:
        _recorded.append(name)
    if _ENABLED:
        return _nvtx.annotate(name, domain=DOMAIN)
    return _NULL


@contextlib.contextmanager
def record_ranges():
    """Collect the names of the ranges opened inside the block (a list), enabled or not."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


def profiler_start() -> bool:
    """cudaProfilerStart (after a synchronize) when CUDA is available; True if it was called."""
    return _cuda_profiler("start")


def profiler_stop() -> bool:
    """cudaProfilerStop (after a synchronize) when CUDA is available; True if it was called."""
    return _cuda_profiler("stop")


def _cuda_profiler(call: str) -> bool:
    if not torch.cuda.is_available():
        return False
    torch.cuda.synchronize()  # the window holds exactly the steps between the two calls
    getattr(torch.cuda.profiler, call)()
    return True
