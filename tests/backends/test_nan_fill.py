"""The autouse fixture of tests/conftest.py is in place: fresh allocations of the backends are NaN."""
import torch

import grokfast.backends.torch.stepper as torch_backend
import grokfast.backends.triton.stepper as triton_backend


def test_fresh_float_allocations_of_the_backends_are_nan():
    for module in (torch_backend, triton_backend):
        assert torch.isnan(module.torch.empty(2, 3, dtype=torch.float32)).all()
        assert torch.isnan(module.torch.empty_like(torch.ones(4, dtype=torch.float64))).all()
        assert module.torch.empty(2, dtype=torch.int64).dtype == torch.int64


def test_aligned_buffers_start_nan():
    buf = torch_backend.aligned_empty(3, (5, 7), torch.float64, torch.device("cpu"))
    assert torch.isnan(buf).all()
