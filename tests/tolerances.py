"""The one tolerance table of the test suite, keyed by dtype, and the comparison helper.

float64: 1e-12 relative — backends reorder sums (segmented gathers, fused reductions), which costs a
few ulps per operation; 20–100 steps of training compound that to ~1e-14..1e-13.
float32: 1e-5 relative, 1e-6 absolute — the same reorderings at float32's 6e-8 ulp over tens of steps.
"""
from __future__ import annotations

import numpy as np
import torch

TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}

# Opt-in TF32 products on a GPU (precision="tf32"), float32 models, compared with the IEEE reference:
# TF32 rounds every product's inputs to a 10-bit mantissa (relative 2⁻¹¹ ≈ 4.9e-4); the logits and
# gradients of the tiny test models are sums of ≤ 64 such products, and 20 steps of training compound
# that to ~1e-3 relative; this allows 10×. tf32x3 (3 TF32 products per fp32 product) is held to the
# float32 entry of TOL.
TF32_TOL = dict(rtol=1e-2, atol=1e-4)


def assert_close(actual, expected, name: str = "", dtype=None) -> None:
    """Assert |actual − expected| ≤ atol + rtol·|expected| elementwise with the dtype's tolerances;
    on failure print the max-abs error, the max relative error and the first mismatching index."""
    a = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual)
    e = torch.as_tensor(np.asarray(expected) if not torch.is_tensor(expected) else expected)
    dtype = dtype or (e.dtype if e.dtype in TOL else torch.float64)
    tol = TOL[dtype]
    a64, e64 = a.detach().cpu().double(), e.detach().cpu().double()
    assert a64.shape == e64.shape, f"{name}: shape {tuple(a64.shape)} != {tuple(e64.shape)}"
    both_nan = torch.isnan(a64) & torch.isnan(e64)
    err = (a64 - e64).abs()
    err[both_nan] = 0
    bad = (err > tol["atol"] + tol["rtol"] * e64.abs()) | (torch.isnan(a64) ^ torch.isnan(e64))
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        rel = (err / e64.abs().clamp_min(1e-300))[~both_nan]
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ beyond {tol} ({dtype}); "
            f"max abs err {float(err.max()):.3e}, max rel err {float(rel.max()):.3e}; first at "
            f"{idx}: actual {float(a64[idx])!r} expected {float(e64[idx])!r}")

# A projection computed by a linear solve (conjugate gradient to 1e-13, or a dense pseudo-inverse)
# against another: the error is the solve's conditioning times float64's ulp, not a few ulps per
# operation — cond(JJᵀ) of paper-real's NTK Gram reaches ~1e4, so norm-wise 1e-10 relative.
SOLVE_RTOL = 1e-10
