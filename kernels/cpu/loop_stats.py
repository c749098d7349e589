"""The statistics of a logged step of one model, for the native chunk loop (loop.py): the
reductions of the torch backend's portable statistics (grokfast.backends.torch.stats with numerics
"portable", grokfast.model's definitions) in the same operations, so the bits are the same.

For model m at θ_s (θ row t, data-loss gradient g, logits Ŷ [N, p], labels c [N]), into the row:
    train_loss    Σ (Ŷ − Y)² / div             the products (Ŷ − Y)·(Ŷ − Y) rounded first, summed
                                               over the N·p entries in reduce.row_sums' order
                  (MSE); cross-entropy and stablemax: loop_loss.loss_value (model.data_loss's
                  operations, exp and log written in the source: kernels/cpu/elementary.py)
    train_acc     #{argmax Ŷ_n = c_n} / N      first maximal index, a NaN wins (torch.argmax)
    min_margin    min_n (Ŷ_{n,c} − max_{j≠c} Ŷ_{n,j})   a NaN gives the positive quiet NaN
                                               (torch.amax / amin return it, whatever the sign)
    norm_W1, norm_W2, grad_norm_W1, grad_norm_W2        the sums Σ x·x of each layer (not their
                                               roots), products rounded first, row_sums' order
    cos_grad_W1, cos_grad_W2                   the sums ⟨g, θ⟩ of each layer
    test_loss, test_acc                        as train, on the test logits (eval steps)
and from d = θ_{s+1} − θ_s after the update (stats_after):
    update_norm   Σ d1·d1 + Σ d2·d2;   cos_update   −(⟨d1, t1⟩ + ⟨d2, t2⟩)
The roots, the totals and the cosines are formed from these sums afterwards by the caller, for
all logged steps at once (stats.finish_before / finish_after, the per-step path's own code: torch's
sqrt is not IEEE's correctly rounded one on every build, so it stays torch's). Every operation
here one IEEE rounding in the working dtype (no FMA: no fastmath), each sum in the eight-lane
order of reduce.py (the very kernel grokfast.numerics.row_sum calls), the row float64 (exact).
`cols` [len(COLUMNS)] gives each column's index in the row out [n_stats, M].

Shapes: t, g [S] (W1 = [:P1], W2 = [P1:P]);  logits [n, p];  labels [n] int64;  prod [1, L]
scratch (L ≥ max(P, n·p));  acc [1] scratch;  out [n_stats, M] float64.
Limits: CPU; float32 or float64; MSE, cross-entropy or stablemax (`loss`: loop_loss's tuple).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .loop_loss import MSE, loss_value
from .reduce import _row_sums_kernel

COLUMNS = ("step", "train_loss", "train_acc", "test_loss", "test_acc", "norm_W1", "norm_W2",
           "norm", "grad_norm_W1", "grad_norm_W2", "grad_norm", "cos_grad_W1", "cos_grad_W2",
           "cos_grad", "update_norm", "cos_update", "min_margin")
(STEP, TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, NORM_W1, NORM_W2, NORM, GNORM_W1, GNORM_W2,
 GNORM, COS_W1, COS_W2, COS, UPDATE_NORM, COS_UPDATE, MIN_MARGIN) = range(len(COLUMNS))


@njit(cache=True, nogil=True)
def _dot(a, b, prod, acc, zero):
    """Σ a·b (1-D, the same length): products rounded first, summed in row_sums' order."""
    n = a.shape[0]
    v = prod[0]
    for i in range(n):
        v[i] = a[i] * b[i]
    _row_sums_kernel(prod[:, :n], zero, acc)
    return acc[0]


@njit(cache=True, nogil=True)
def mse_loss(logits, labels, div, one, zero, prod, acc):
    """Σ (Ŷ − Y)² / div of one model's logits [n, p] (div: n·p for the mean, 1 for the sum)."""
    n, p = logits.shape
    v = prod[0]
    for i in range(n):
        y, c = logits[i], labels[i]
        for j in range(p):
            d = y[j] - (one if j == c else zero)
            v[i * p + j] = d * d
    _row_sums_kernel(prod[:, :n * p], zero, acc)
    return acc[0] / div


@njit(cache=True, nogil=True)
def accuracy(logits, labels, one, zero):
    """Fraction of rows whose argmax (first maximal index, a NaN first of all) is the label."""
    n, p = logits.shape
    hits, count = zero, zero
    for i in range(n):
        y = logits[i]
        best, arg = y[0], 0
        for j in range(1, p):
            if best != best:
                break
            if y[j] > best or y[j] != y[j]:
                best, arg = y[j], j
        if arg == labels[i]:
            hits += one
        count += one                       # n in the working dtype (exact)
    return hits / count


@njit(cache=True, nogil=True)
def min_margin(logits, labels, acc):
    """min_n (Ŷ_{n,c} − max_{j≠c} Ŷ_{n,j}) in the working dtype (acc [1]: scratch); NaN when
    any term is, as the positive quiet NaN."""
    n, p = logits.shape
    acc[0] = np.inf
    low = acc[0]                            # +inf in the working dtype
    for i in range(n):
        y, c = logits[i], labels[i]
        top = -acc[0]
        for j in range(p):
            if j != c and (y[j] > top or y[j] != y[j]) and top == top:
                top = y[j]
        d = y[c] - top
        if (d < low or d != d) and low == low:
            low = d
    if low != low:                          # torch.amin's NaN: the positive quiet NaN
        acc[0] = np.nan
        low = acc[0]
    return low


@njit(cache=True, nogil=True)
def data_loss(loss, logits, labels, div, one, zero, prod, acc):
    """The data loss of one model's logits [n, p]: mse_loss, or loop_loss.loss_value for
    cross-entropy and stablemax (`loss`: loop_loss's tuple)."""
    if loss[0] == MSE:
        return mse_loss(logits, labels, div, one, zero, prod, acc)
    return loss_value(loss, logits, labels, acc)


@njit(cache=True, nogil=True)
def stats_before(m, s, t, g, logits, labels, P1, P, div, loss, one, zero, prod, acc, cols, out):
    """Every column at θ_s but the test metrics and the update's, the norms and cosines as sums
    (module docstring)."""
    W1, W2, G1, G2 = t[:P1], t[P1:P], g[:P1], g[P1:P]
    out[cols[STEP], m] = s
    out[cols[TRAIN_LOSS], m] = data_loss(loss, logits, labels, div, one, zero, prod, acc)
    out[cols[TRAIN_ACC], m] = accuracy(logits, labels, one, zero)
    out[cols[NORM_W1], m] = _dot(W1, W1, prod, acc, zero)
    out[cols[NORM_W2], m] = _dot(W2, W2, prod, acc, zero)
    out[cols[GNORM_W1], m] = _dot(G1, G1, prod, acc, zero)
    out[cols[GNORM_W2], m] = _dot(G2, G2, prod, acc, zero)
    out[cols[COS_W1], m] = _dot(G1, W1, prod, acc, zero)
    out[cols[COS_W2], m] = _dot(G2, W2, prod, acc, zero)
    out[cols[MIN_MARGIN], m] = min_margin(logits, labels, acc)


@njit(cache=True, nogil=True)
def test_metrics(m, logits, labels, div, loss, one, zero, prod, acc, cols, out):
    """test_loss and test_acc of model m from its test logits [n_test, p]."""
    out[cols[TEST_LOSS], m] = data_loss(loss, logits, labels, div, one, zero, prod, acc)
    out[cols[TEST_ACC], m] = accuracy(logits, labels, one, zero)


@njit(cache=True, nogil=True)
def stats_after(m, t, t0, d, P1, P, zero, prod, acc, cols, out):
    """The sums of update_norm and cos_update of d = θ_{s+1} − θ_s (t: θ_{s+1}, t0: θ_s; d [S]
    scratch)."""
    for i in range(P):
        d[i] = t[i] - t0[i]
    out[cols[UPDATE_NORM], m] = (_dot(d[:P1], d[:P1], prod, acc, zero)
                                 + _dot(d[P1:P], d[P1:P], prod, acc, zero))
    out[cols[COS_UPDATE], m] = -(_dot(d[:P1], t0[:P1], prod, acc, zero)
                                 + _dot(d[P1:P], t0[P1:P], prod, acc, zero))
