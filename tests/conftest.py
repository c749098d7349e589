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
        if isinstance(a, tuple) and hasattr(a, "_fields"):  # kernels.common.State
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
NAN_FILLED_MODULES = ("grokfast.torch_backend", "grokfast.torch_paths", "grokfast.optim",
                      "grokfast.grad_filters", "grokfast.torch_loss", "grokfast.torch_stats",
                      "grokfast.sharded", "grokfast.triton_backend",
                      "grokfast.kernels.common",
                      "grokfast.kernels.fused", "grokfast.kernels.rows", "grokfast.kernels.stats",
                      "grokfast.kernels.update", "grokfast.kernels.cpu_grad")


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
