"""NVTX ranges and the CUDA profiler capture window for Nsight Systems, free when nothing listens.

    with nvtx_range("step"): ...

Range names (domain "grokfast"), stable across releases:

* engine (grokfast/engine.py): ``step`` (one chunk of training steps, stepper.advance),
  ``evaluation`` (reading a chunk's statistics: divergence, milestones, early stop; the final
  evaluation of θ), ``logging`` (streaming the history, events, progress bar), ``checkpoint``
  (writing a checkpoint);
* inside the reference stepper (grokfast/backends/reference.py), per training step: ``forward``, ``backward``,
  ``update`` (filters, ⊥Grad, optimizer step, fixed norm) and ``statistics``.

The ranges are emitted when CUDA is available, or on any machine with ``GROKFAST_NVTX=1`` in the
environment (Nsight Systems traces CPU-only processes too); otherwise they are no-ops and the code
path still runs. They go through the ``nvtx`` package (optional: ``pip install nvtx``), in the
domain "grokfast", or without it through ``torch.cuda.nvtx`` (any CUDA build of torch; the default
domain, same names), so a GPU machine without the package still shows them. ``BACKEND`` says which
one is in use ("nvtx", "torch.cuda.nvtx" or "off"). ``profiler_start``/``profiler_stop`` wrap
cudaProfilerStart/Stop, so that ``nsys profile --capture-range=cudaProfilerApi`` records only the
window ``--profile-steps A:B``.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import nvtx as _nvtx
except ImportError:  # optional (the "nvtx" extra): torch.cuda.nvtx covers CUDA builds of torch
    _nvtx = None

DOMAIN = "grokfast"
RANGE_NAMES = ("step", "forward", "backward", "update", "statistics", "evaluation", "logging",
               "checkpoint")
_NULL = contextlib.nullcontext()
_recorded = None  # list of range names while record_ranges() is active (tests)


def _range_factory():
    """(name → context manager, backend name): the nvtx package where installed, else
    torch.cuda.nvtx where torch was built with CUDA (it needs no GPU), else nothing; and nothing at
    all unless CUDA is available or GROKFAST_NVTX=1."""
    if not (torch.cuda.is_available() or os.environ.get("GROKFAST_NVTX") == "1"):
        return None, "off"
    if _nvtx is not None:
        return (lambda name: _nvtx.annotate(name, domain=DOMAIN)), "nvtx"
    if hasattr(torch._C, "_nvtx"):
        return torch.cuda.nvtx.range, "torch.cuda.nvtx"
    return None, "off"


_RANGE, BACKEND = _range_factory()


def nvtx_range(name: str):
    """A context manager marking `name` as an NVTX range (no-op when disabled; see BACKEND)."""
    if _recorded is not None:
        _recorded.append(name)
    if _RANGE is not None:
        return _RANGE(name)
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
