"""Cross-entropy and stablemax of one model's logits with exp and log written in the source
(elementary.py): the loss gradient ∂L/∂Ŷ and the loss value, in the operation order of the torch
backend's portable per-step path (grokfast/backends/torch/loss.py LossGrad and grokfast.model
data_loss with numerics "portable"), which calls the gradient here too, so the native chunk loop
(loop.py) and the per-step path compute the same bits.

Per sample i (logits z = Ŷ_i [p] in the loss dtype, label c, g = ∂L/∂(per-sample loss): 1/N for
the mean, 1 for the sum; Σ in reduce.row_sums' eight-lane order over the p classes or n samples):
    cross-entropy   m = max_j z_j (a NaN wins; 0 when not finite),  lse = log Σ_j e^(z_j − m) + m
                    ∂L/∂z_j = e^(z_j − lse)·g − [j = c]·g;          loss_i = lse − z_c
    stablemax       s(x) = x + 1 (x ≥ 0), 1/(1 − min(x, 0)) (x < 0),  S = Σ_j s(z_j)
                    ds_j = g/S − ([j = c]·g)/s(z_j);  ∂L/∂z_j = ds_j·(r·r) with r = 1/(1 − z_j)
                    for z_j < 0, ds_j otherwise;       loss_i = log S − log s(z_c)
    L = Σ_i loss_i, divided by n for the mean (n counted in the loss dtype, exact).
Every operation one IEEE rounding in the loss dtype (no FMA, no fastmath); a float32 exp / log is
elementary's float64 one rounded once to float32. The loss dtype is the dtype of the scratch
arrays zl, el, al: float64 for float32 logits with loss_dtype "float64" (logits widened exactly,
the gradient and the loss rounded once to the working dtype on the store), else the working dtype.

Shapes: logits, out [n, p] (working dtype);  labels [n] int64;  zl [≥ n, p], el [2, ≥ n, p] and
al [≥ n] scratch of the loss dtype;  g a scalar of the loss dtype;  acc [1] of the working dtype.
Limits: CPU; float32 or float64; cross-entropy (CROSS_ENTROPY) and stablemax (STABLEMAX); MSE
(kind MSE) is update._mse_grad_kernel and loop_stats.mse_loss.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .elementary import exp_row, log
from .reduce import _row_sums_kernel
from .update import _mse_grad_kernel

MSE, CROSS_ENTROPY, STABLEMAX = 0, 1, 2


@njit(cache=True, nogil=True, error_model="numpy")
def _widen(logits, zl, n):
    """zl[:n] = the logits in the loss dtype (exact)."""
    for i in range(n):
        for j in range(logits.shape[1]):
            zl[i, j] = logits[i, j]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _shift(z, zero):
    """m of a row z (module docstring): max_j z_j, 0 where a z_j is NaN or the maximum is ±inf.
    Eight running maxima (j mod 8, each x > m ? x : m, which skips NaN) merged at the end, NaN
    found by its own flag: the same m as one running maximum, as a maximum is one value of the
    row whatever the order (±0 aside, which no result can tell apart: z − (±0) differs only at
    z = −0, where e^(±0) = 1 both, and log S ≥ +0 gives log S + (±0) = log S), in independent
    chains instead of one branch per element."""
    p = z.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = z[0]
    nan = False
    j = 0
    while j + 8 <= p:
        x0, x1, x2, x3, x4, x5, x6, x7 = z[j], z[j + 1], z[j + 2], z[j + 3], z[j + 4], \
            z[j + 5], z[j + 6], z[j + 7]
        m0 = x0 if x0 > m0 else m0
        m1 = x1 if x1 > m1 else m1
        m2 = x2 if x2 > m2 else m2
        m3 = x3 if x3 > m3 else m3
        m4 = x4 if x4 > m4 else m4
        m5 = x5 if x5 > m5 else m5
        m6 = x6 if x6 > m6 else m6
        m7 = x7 if x7 > m7 else m7
        nan |= ((x0 != x0) | (x1 != x1) | (x2 != x2) | (x3 != x3) | (x4 != x4) | (x5 != x5)
                | (x6 != x6) | (x7 != x7))
        j += 8
    while j < p:
        x0 = z[j]
        m0 = x0 if x0 > m0 else m0
        nan |= x0 != x0
        j += 1
    for m in (m1, m2, m3, m4, m5, m6, m7):
        m0 = m if m > m0 else m0
    if nan or not m0 - m0 == zero:                    # NaN or ±inf: shifted by 0
        return zero
    return m0


@njit(cache=True, nogil=True, error_model="numpy")
def _lse_rows(zl, el, al, n, zero):
    """al[i] = log Σ_j e^(zl[i, j] − m_i) + m_i for i < n (grokfast.numerics.logsumexp): the
    shifted logits into el[0], every row's exponentials in one exp_row call into el[1] (another
    buffer: in place, LLVM's overlap check would keep the loop scalar)."""
    p = zl.shape[1]
    shifted, e = el[0], el[1]
    for i in range(n):
        z = zl[i]
        m = _shift(z, zero)
        al[i] = m
        for j in range(p):
            shifted[i, j] = z[j] - m
    exp_row(shifted[:n].reshape(n * p), e[:n].reshape(n * p))   # float32: rounded once
    for i in range(n):
        m = al[i]
        _row_sums_kernel(e[i:i + 1], zero, al[i:i + 1])
        al[i] = log(np.float64(al[i]))
        al[i] = al[i] + m


@njit(cache=True, nogil=True, error_model="numpy")
def _stablemax_rows(zl, s, al, n, one, zero):
    """s[i] = s(zl[i]) and al[i] = Σ_j s(zl[i, j]) for i < n."""
    p = zl.shape[1]
    for i in range(n):
        for j in range(p):
            x = zl[i, j]
            s[i, j] = x + one if x >= zero else one / (one - (zero if x > zero else x))
        _row_sums_kernel(s[i:i + 1], zero, al[i:i + 1])


@njit(cache=True, nogil=True, error_model="numpy")
def loss_grad(loss, logits, labels, scale, out):
    """∂L/∂Ŷ of one model's logits [n, p] into out [n, p] (module docstring); `loss` the tuple
    (kind, mean, g, one, zero, zl, el, al); kind MSE: update._mse_grad_kernel with `scale`."""
    kind, mean, g, one, zero, zl, el, al = loss
    n, p = logits.shape
    if kind == MSE:
        _mse_grad_kernel(logits.reshape((1, n, p)), labels, scale, out.reshape((1, n, p)))
        return
    _widen(logits, zl, n)
    shifted, e = el[0], el[1]
    if kind == CROSS_ENTROPY:
        _lse_rows(zl, el, al, n, zero)
        for i in range(n):
            for j in range(p):
                shifted[i, j] = zl[i, j] - al[i]
        exp_row(shifted[:n].reshape(n * p), e[:n].reshape(n * p))
        for i in range(n):
            for j in range(p):
                out[i, j] = e[i, j] * g - (one if j == labels[i] else zero) * g
    else:
        _stablemax_rows(zl, e, al, n, one, zero)
        for i in range(n):
            a = g / al[i]
            for j in range(p):
                x = zl[i, j]
                ds = a - ((one if j == labels[i] else zero) * g) / e[i, j]
                if x < zero:
                    r = one / (one - x)
                    ds = ds * (r * r)
                out[i, j] = ds


@njit(cache=True, nogil=True, error_model="numpy")
def loss_value(loss, logits, labels, acc):
    """The cross-entropy or stablemax loss L of one model's logits [n, p] (module docstring), in
    the loss dtype, rounded to the working dtype (through acc [1])."""
    kind, mean, g, one, zero, zl, el, al = loss
    n, p = logits.shape
    _widen(logits, zl, n)
    logs = el[0]                                      # the two logs of a sample, rounded
    if kind == CROSS_ENTROPY:
        _lse_rows(zl, el, al, n, zero)
        for i in range(n):
            al[i] = al[i] - zl[i, labels[i]]
    else:
        _stablemax_rows(zl, el[1], al, n, one, zero)
        for i in range(n):
            logs[i, 0] = log(np.float64(al[i]))
            logs[i, 1] = log(np.float64(el[1, i, labels[i]]))
            al[i] = logs[i, 0] - logs[i, 1]
    _row_sums_kernel(al[:n].reshape((1, n)), zero, logs[0, :1])
    total = logs[0, 0]
    if mean:
        count = zero
        for i in range(n):
            count += one                              # n in the loss dtype (exact)
        total = total / count
    acc[0] = total
    return acc[0]


def loss_grad_models(loss, logits, labels, out) -> None:
    """∂L/∂Ŷ of M models' logits [M, n, p] into out [M, n, p] (cross-entropy or stablemax;
    numpy arrays; `loss` as loss_grad's)."""
    for m in range(logits.shape[0]):
        loss_grad(loss, logits[m], labels, loss[2], out[m])
