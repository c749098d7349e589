"""The MSE loss of one model over a range of its rows: the gradient row by row, and the loss sum in
reduce.py's fixed order, each in one numba call (one model: y, out [N, p]; labels [N] int64).

    mse_grad_rows(y, labels, scale, out, r0, r1)
        out[n, j] = (y[n, j] − [j = labels[n]])·scale for r0 ≤ n < r1
        (∂L/∂Ŷ as autograd forms it: a subtraction, then a product, one rounding each; y − 0 is
        y exactly, so the entries off the label are y·scale)
    mse_sum(y, labels, zero) -> Σ_{n, j} (y[n, j] − [j = labels[n]])²
        each term d·d with d = y − Y rounded once (torch's (Ŷ − Y) ** 2), the N·p terms summed by
        reduce.py's row sum over the flattened index c = n·p + j (its eight-lane order)

Every output row of mse_grad_rows is computed whole from its own row, so a caller may cut the rows
over threads (grokfast.backends.torch.split) with the bits of one call. mse_sum computes the bits
of grokfast.numerics.total((Ŷ − Y) ** 2) without the one-hot Y or torch's temporaries. Nothing is
fused (no fastmath: LLVM gets no `contract` flag), so the bits are the same on every CPU.
Limits: CPU; float32 or float64 (one compiled variant each, cached on disk).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .reduce import _row_sums_kernel


@njit(cache=True, nogil=True)
def mse_grad_rows(y, labels, scale, out, r0, r1):
    """out[n] = (y[n] − e_{labels[n]})·scale for the rows r0 ≤ n < r1 (module docstring): the
    rows as one flat vectorized pass of y·scale (y − 0 is y exactly, ±0 and NaN included), then
    each label's entry (y − 1)·scale."""
    one = scale / scale                                    # 1 in the working dtype
    p = y.shape[1]
    flat_y, flat_o = y[r0:r1].reshape((r1 - r0) * p), out[r0:r1].reshape((r1 - r0) * p)
    for i in range(flat_y.shape[0]):
        flat_o[i] = flat_y[i] * scale
    for n in range(r0, r1):
        c = labels[n]
        out[n, c] = (y[n, c] - one) * scale


@njit(cache=True, nogil=True)
def mse_sum(y, labels, zero):
    """Σ (y − Y)² over every element, in the order of the module docstring: the squares into a
    [1, N·p] row, then reduce.py's row sum of it."""
    N, p = y.shape
    one = zero + np.float32(1)                             # 1 in the working dtype
    sq = np.empty((1, N * p), y.dtype)
    for n in range(N):
        yr, o, c = y[n], sq[0, n * p:(n + 1) * p], labels[n]
        for j in range(p):
            o[j] = yr[j] * yr[j]                           # (y − 0)²: y − 0 is y exactly
        d = yr[c] - one
        o[c] = d * d
    out = np.empty(1, y.dtype)
    _row_sums_kernel(sq, zero, out)
    return out[0]
