"""Test-session setup shared by every test file.

Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before anything
imports triton: hence at import time, here.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture
def launch():
    """launch(launcher, *args, **kwargs): run a Triton kernel launcher where kernels run — on the GPU
    when there is one (on device copies of the CPU tensor arguments, copied back afterwards, so a
    test compares CPU tensors either way), else directly in the CPU interpreter."""
    def run(launcher, *args, **kwargs):
        if not torch.cuda.is_available():
            return launcher(*args, **kwargs)
        dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        launcher(*dev, **kwargs)
        for a, d in zip(args, dev):
            if isinstance(a, torch.Tensor):
                a.copy_(d.cpu())
    return run
