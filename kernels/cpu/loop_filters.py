"""Grokfast's gradient filters on one model's row, for the native chunk loop (loop.py): the torch
backend's EMA and MA filters (grokfast/backends/torch/grad_filters.py) in the same operations, so
the bits are the same.

    ema_filter   μ ← g at the model's first filtered step; μ ← μ·α + g·(1 − α); g ← g + μ·λ
    ma_filter    the ring's slot `slot` ← g; once the window holds W gradients (or always
                 without warmup): total = the W slots summed from the oldest (slot + 1) on,
                 divided by the window's length for the mean; g ← g + total·λ

Every operation one IEEE rounding in the working dtype (no FMA: no fastmath), elementwise over the
row's S entries (θ's padding stays 0). Shapes: g, ema, total [S];  ring [W, S] (one model's
window, unfilled slots 0);  α, 1 − α, λ: scalars of the working dtype.
Limits: CPU; float32 or float64.
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def ema_filter(g, ema, alpha, one_minus_alpha, lamb, first):
    if first:
        ema[:] = g
    for i in range(g.shape[0]):
        e = ema[i] * alpha + g[i] * one_minus_alpha
        ema[i] = e
        g[i] = g[i] + e * lamb


@njit(cache=True, nogil=True)
def ma_filter(g, ring, slot, length, warmup, mean, lamb, one, zero, total):
    """`length`: gradients in the window after this push (≤ W)."""
    W = ring.shape[0]
    ring[slot] = g
    if warmup and length < W:
        return
    oldest = (slot + 1) % W
    total[:] = ring[oldest]
    for j in range(1, W):
        r = ring[(oldest + j) % W]
        for i in range(g.shape[0]):
            total[i] = total[i] + r[i]
    if mean:
        n = zero
        for _ in range(length):
            n += one                                # the length in the working dtype (exact)
        for i in range(g.shape[0]):
            total[i] = total[i] / n
    for i in range(g.shape[0]):
        g[i] = g[i] + total[i] * lamb
