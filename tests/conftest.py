"""Test-session setup shared by every test file.

Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before anything
imports triton: hence at import time, here.
"""
import importlib
import os
import types

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture
def launch():
    """launch(launcher, *args, **kwargs): run a Triton kernel launcher where kernels run — on the GPU
    when there is one (on device copies of the CPU tensor arguments, and of the tensors of a State
    argument, copied back afterwards, so a test compares CPU tensors either way), else directly in
    the CPU interpreter."""
    def to_device(a):
        if isinstance(a, torch.Tensor):
            return a.cuda()
        if isinstance(a, tuple) and hasattr(a, "_fields"):  # kernels.klaunch.State
            return type(a)(*map(to_device, a))
        return a

    def copy_back(a, d):
        if isinstance(a, torch.Tensor):
            a.copy_(d.cpu())
        elif isinstance(a, tuple) and hasattr(a, "_fields"):
            for x, y in zip(a, d):
                copy_back(x, y)

    def run(launcher, *args, **kwargs):
        if not torch.cuda.is_available():
            return launcher(*args, **kwargs)
        dev = [to_device(a) for a in args]
        launcher(*dev, **kwargs)
        for a, d in zip(args, dev):
            copy_back(a, d)
    return run


# Modules whose fresh allocations the NaN fixture fills: the backends and the kernel launchers.
NAN_FILLED_MODULES = ("grokfast.backends.torch.stepper", "grokfast.backends.torch.buffers",
                      "grokfast.backends.torch.paths", "grokfast.backends.torch.optim",
                      "grokfast.backends.torch.grad_filters", "grokfast.backends.torch.loss",
                      "grokfast.backends.torch.stats", "grokfast.backends.torch.sharded",
                      "grokfast.backends.triton.stepper",
                      "grokfast.kernels.triton.launch", "grokfast.kernels.triton.fused",
                      "grokfast.kernels.triton.rows", "grokfast.kernels.triton.stats",
                      "grokfast.kernels.triton.update", "grokfast.kernels.cpu.grad")


def _nan_filled(alloc):
    def fresh(*args, **kwargs):
        t = alloc(*args, **kwargs)
        if t.is_floating_point() or t.is_complex():
            t.fill_(float("nan"))
        return t
    fresh.__name__ = alloc.__name__
    return fresh


class _NaNTorch(types.ModuleType):
    """`torch` as the package's modules see it in tests: torch.empty / torch.empty_like return
    NaN-filled tensors (floating dtypes), so an element the code forgets to write fails loudly."""

    empty = staticmethod(_nan_filled(torch.empty))
    empty_like = staticmethod(_nan_filled(torch.empty_like))

    def __getattr__(self, name):
        return getattr(torch, name)


_NAN_TORCH = _NaNTorch("torch")


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Every fresh torch.empty / torch.empty_like made by the backends and launchers is NaN."""
    for name in NAN_FILLED_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # Triton or numba not installed: that module is not used either
            continue
        if getattr(module, "torch", None) is torch:
            monkeypatch.setattr(module, "torch", _NAN_TORCH)
    yield


@pytest.fixture
def drawn(monkeypatch):
    """What every figure saved during the test shows, by file name: per axes, the data of its lines
    ((x, y) arrays), of its point collections (scatter offsets, [n, 2], in data coordinates only),
    its texts and its images. Figure tests check the numbers drawn, not the bytes of the PNG."""
    import matplotlib.figure
    import numpy as np

    import grokfast.store.history as history

    figures = {}
    save = matplotlib.figure.Figure.savefig
    save_figure = history.save_figure
    naming = []  # the file a save_figure call is writing (it renders into a buffer first)

    def named(fig, path, *args, **kwargs):
        naming.append(os.path.basename(str(path)))
        try:
            return save_figure(fig, path, *args, **kwargs)
        finally:
            naming.pop()

    def capture(fig, path, *args, **kwargs):
        axes = []
        for ax in fig.axes:
            points = [np.asarray(c.get_offsets(), dtype=float) for c in ax.collections
                      if c.get_offsets() is not None and len(c.get_offsets())
                      and c.get_offset_transform() == ax.transData]
            axes.append({"lines": [(np.asarray(l.get_xdata(), dtype=float),
                                    np.asarray(l.get_ydata(), dtype=float)) for l in ax.lines],
                         "points": points, "texts": [t.get_text() for t in ax.texts],
                         "images": [np.asarray(im.get_array()) for im in ax.images],
                         "title": ax.get_title()})
        name = naming[-1] if naming else os.path.basename(str(path))
        figures[name] = axes
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    monkeypatch.setattr(history, "save_figure", named)
    return figures
