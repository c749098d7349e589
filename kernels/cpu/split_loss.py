"""The MSE loss of one model over a range of its rows: the gradient row by row, and the loss sum in
reduce.py's fixed order, each in one numba pass (one model: y, out [N, p]; labels [N] int64).

    mse_grad_rows(y, labels, scale, out, r0, r1)
        out[n, j] = (y[n, j] − [j = labels[n]])·scale for r0 ≤ n < r1
        (∂L/∂Ŷ as autograd forms it: a subtraction, then a product, one rounding each)
    mse_sum(y, labels, zero) -> Σ_{n, j} (y[n, j] − [j = labels[n]])²
        each term d·d with d = y − Y rounded once (torch's (Ŷ − Y) ** 2), the N·p terms summed in
        reduce.py's order over the flattened index c = n·p + j: lane l takes c ≡ l (mod 8) from
        c = 0, the terms after the last whole group of eight go to a ninth sum t, then
        ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + t

Every output row of mse_grad_rows is computed whole from its own row, so a caller may cut the rows
over threads (grokfast.backends.torch.split) with the bits of one call. mse_sum computes the bits
of grokfast.numerics.total((Ŷ − Y) ** 2) without forming the one-hot Y or the squares. Nothing is
fused (no fastmath: LLVM gets no `contract` flag), so the bits are the same on every CPU.
Limits: CPU; float32 or float64 (one compiled variant each, cached on disk).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def mse_grad_rows(y, labels, scale, out, r0, r1):
    """out[n] = (y[n] − e_{labels[n]})·scale for the rows r0 ≤ n < r1 (module docstring)."""
    one, zero = scale / scale, scale - scale              # 1 and 0 in the working dtype
    p = y.shape[1]
    for n in range(r0, r1):
        yr, o, c = y[n], out[n], labels[n]
        for j in range(p):
            o[j] = (yr[j] - (one if j == c else zero)) * scale


@njit(cache=True, nogil=True)
def mse_sum(y, labels, zero):
    """Σ (y − Y)² over every element, in the order of the module docstring."""
    N, p = y.shape
    one = zero + np.float32(1)                             # 1 in the working dtype
    C = N * p
    G = C - C % 8
    lanes = np.full(8, zero)                               # s0 … s7
    t = zero
    n, j = 0, 0                                            # c = n·p + j
    for c in range(C):
        d = y[n, j] - (one if j == labels[n] else zero)
        if c < G:
            lanes[c % 8] += d * d
        else:
            t += d * d
        j += 1
        if j == p:
            n, j = n + 1, 0
    s = lanes
    return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + t
