"""Fused elementwise steps of the torch backend's portable numerics on the CPU: numba loops, one
pass over each model's row instead of several torch ops, every operation one IEEE rounding in a
written order (no FMA: numba without fastmath gives LLVM no `contract` flag), so the bits are
those of the separate torch ops on every CPU and vector width.

    mse_grad(logits [M, N, p], labels [N] int64, scale, out [M, N, p])
        out = (Ŷ − Y)·scale with Y the one-hot labels (the MSE gradient as autograd forms it;
        split_loss.mse_grad_rows over every row of each model)
    gd_step(theta [M, S], grad [M, S], neg_lr [M], wd [M], P)
        g ← g + wd·θ (where wd ≠ 0), then θ ← θ + (−lr)·g, over the first P entries of each row

Limits: CPU; float32 or float64 (one compiled variant each, cached on disk).
"""
from __future__ import annotations

from numba import njit

from .split_loss import mse_grad_rows


@njit(cache=True, nogil=True)
def _mse_grad_kernel(logits, labels, scale, out):
    for m in range(logits.shape[0]):
        mse_grad_rows(logits[m], labels, scale, out[m], 0, logits.shape[1])


@njit(cache=True, nogil=True)
def _gd_step_kernel(theta, grad, neg_lr, wd, P):
    for m in range(theta.shape[0]):
        t, g, a, d = theta[m, :P], grad[m, :P], neg_lr[m], wd[m]
        if d != 0:
            for i in range(P):
                gi = g[i] + d * t[i]
                g[i] = gi
                t[i] = t[i] + a * gi
        else:
            for i in range(P):
                t[i] = t[i] + a * g[i]


def mse_grad(logits, labels, scale, out) -> None:
    """out[m, n, j] = (logits[m, n, j] − [j = labels[n]])·scale (numpy arrays; scale a numpy
    scalar of the working dtype)."""
    _mse_grad_kernel(logits, labels, scale, out)


def gd_step(theta, grad, neg_lr, wd, P) -> None:
    """Gradient descent with coupled weight decay on the first P entries of every row, in place
    (numpy arrays; neg_lr, wd: [M] in the working dtype)."""
    _gd_step_kernel(theta, grad, neg_lr, wd, P)
