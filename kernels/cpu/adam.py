"""The Adam / AdamW update of the torch backend's portable numerics as one numba pass: the per-step
path's separate torch ops (grokfast/backends/torch/optim.py, Adam.step with `fused` False) in the
same order, one IEEE rounding per operation, and a correctly rounded square root.

Per element i of θ, g, m = exp_avg, v = exp_avg_sq, with per-model scalars of the working dtype:

    AdamW (decoupled):       θ ← θ·decay                           decay = 1 − lr·wd
    Adam with weight decay:  g ← g + θ·wd                           (when any model of the launch
                                                                    has wd; g is written back)
    m ← m + (g − m)·(1 − β1)
    v ← v·β2 + (g·(1 − β2))·g
    denom = √v / bc2_sqrt + ε                                       bc2_sqrt = √(1 − β2ᵗ)
    θ ← θ + (m·neg_step_size) / denom                               neg_step_size = −lr/(1 − β1ᵗ)

No multiply–add fuses (numba without fastmath gives LLVM no `contract` flag), and the square
root is `math.sqrt`: numba emits a pure call of libm's sqrtf / sqrt, which LLVM turns into
llvm.sqrt, the sqrt instruction (IEEE's correctly rounded root; vsqrtps / vsqrtpd in the vector
loop: every element is independent, so the lanes change no bit). A division by zero gives
IEEE's ±inf / NaN, as torch's (error_model "numpy": no Python ZeroDivisionError, whose test per
division would also keep the loop scalar). Each element's bits are fixed by the source alone
(tests/kernels/test_kernel_adam.py reads the compiled code).

    adam_range(theta, g, exp_avg, exp_avg_sq, a, b, ...)   elements [a, b) of one model's row
        (1-D arrays [S]), so that a caller may split one large model's row over threads;
    adam_step(theta, g, exp_avg, exp_avg_sq, ...)          every element of every model's row
        ([M, S] arrays, per-model scalars [M]).

Limits: CPU; float32 or float64 (one compiled variant each, cached on disk).
"""
from __future__ import annotations

import math

from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def adam_range(theta, g, exp_avg, exp_avg_sq, a, b, neg_step_size, bc2_sqrt, decay, wd,
               one_minus_beta1, beta2, one_minus_beta2, eps, decoupled, any_wd):
    # slices: a loop from 0 has no negative-index wraparound, so it vectorizes
    theta, g, exp_avg, exp_avg_sq = theta[a:b], g[a:b], exp_avg[a:b], exp_avg_sq[a:b]
    for i in range(theta.shape[0]):
        t, gi = theta[i], g[i]
        if decoupled:
            t = t * decay
        elif any_wd:
            gi = gi + t * wd
            g[i] = gi
        m = exp_avg[i]
        m = m + (gi - m) * one_minus_beta1
        v = exp_avg_sq[i] * beta2 + (gi * one_minus_beta2) * gi
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = math.sqrt(v) / bc2_sqrt + eps
        theta[i] = t + (m * neg_step_size) / denom


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_step_kernel(theta, g, exp_avg, exp_avg_sq, neg_step_size, bc2_sqrt, decay, wd,
                      one_minus_beta1, beta2, one_minus_beta2, eps, decoupled, any_wd):
    for m in range(theta.shape[0]):
        adam_range(theta[m], g[m], exp_avg[m], exp_avg_sq[m], 0, theta.shape[1],
                   neg_step_size[m], bc2_sqrt[m], decay[m], wd[m], one_minus_beta1[m],
                   beta2[m], one_minus_beta2[m], eps[m], decoupled, any_wd)


def adam_step(theta, g, exp_avg, exp_avg_sq, neg_step_size, bc2_sqrt, decay, wd,
              one_minus_beta1, beta2, one_minus_beta2, eps, decoupled, any_wd) -> None:
    """One Adam (decoupled False: weight decay added to g where any_wd) or AdamW (decoupled True)
    update of every model's whole row, in place: theta, g, exp_avg, exp_avg_sq [M, S]; the
    per-step scalars neg_step_size, bc2_sqrt, decay and the per-model wd, 1 − β1, β2, 1 − β2, ε
    [M], all numpy arrays of the working dtype (module docstring for the order)."""
    _adam_step_kernel(theta, g, exp_avg, exp_avg_sq, neg_step_size, bc2_sqrt, decay, wd,
                      one_minus_beta1, beta2, one_minus_beta2, eps, decoupled, any_wd)
