"""The row phase of a large model's step in blocks of rows that stay in cache: for each block of
BLOCK rows, the forward (Z, H, Ŷ), the loss gradient dŶ and dZ = dŶ W2ᵀ ⊙ σ'(Z), one after another.

    rows_step(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, loss, labels, scale,
              dlogits, w2t, dZ, r0, r1)
        rows r0 ≤ n < r1 of model m: grad.forward_rows, the loss gradient (loss None: MSE,
        split_loss.mse_grad_rows with `scale`; else loop_loss.loss_grad with its `loss` tuple,
        whose scratch holds ≥ BLOCK rows), grad.backward_hidden; arrays as in grad.py
    step_models(models, theta, i0, i1, P1, quadratic, zero, Z, H, logits, loss, labels, scale,
                dlogits, w2t, g2t, dZ, grad, order, starts)
        the whole gradient of each model listed, on this thread: W2ᵀ, rows_step over every row,
        then ∇W2 and ∇W1 (grad.backward_w2, grad.backward_w1): the bits of grad.forward_portable,
        the loss gradient and grad.backward (a shard's per-step path, numerics "portable")

    forward_logits(models, theta, i0, i1, P1, quadratic, zero, Zs, Hs, logits, r0, r1)
        Ŷ of each model listed for the rows r0 ≤ n < r1 (an evaluation's forward): per block,
        grad.first_layer_rows into the scratch Zs, Hs [≥ BLOCK, w], then fma.forward_product
        into logits; the bits of grad.forward_portable's logits, with no [N, w] Z and H written
        (13.5 MB each for gromov's 6 586 test samples) or read back

Every row of Z, H, Ŷ, dŶ and dZ is computed whole from the same row of the one before (and θ, W2ᵀ,
the labels), so blocks give the bits of the three calls over the whole range. What the blocks
change is where the data is when it is read again: a block's H, Z and Ŷ (BLOCK·(2w + p) values,
~0.4 MiB at width 512 float32) are still in L2 when its dŶ and dZ read them, where three passes
over a whole range (H, Z and dZ: 5.8 MB each at gromov's N = 2823, width 512) read them back from
L3 or memory. BLOCK is a multiple of 6 and 16 (whole register tiles of Ŷ and of dZ's rows).
"""
from __future__ import annotations

from numba import njit

from .fma import forward_product
from .grad import (backward_hidden, backward_w1, backward_w2, first_layer_rows, forward_rows,
                   w2_transpose)
from .loop_loss import loss_grad
from .split_loss import mse_grad_rows

BLOCK = 96


@njit(cache=True, nogil=True)
def rows_step(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, loss, labels, scale, dlogits,
              w2t, dZ, r0, r1):
    """The row phase of model m for rows r0 ≤ n < r1, BLOCK rows at a time (module docstring)."""
    for a in range(r0, r1, BLOCK):
        b = min(a + BLOCK, r1)
        forward_rows(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, a, b)
        if loss is None:
            mse_grad_rows(logits[m], labels, scale, dlogits[m], a, b)
        else:
            loss_grad(loss, logits[m][a:b], labels[a:b], scale, dlogits[m][a:b])
        backward_hidden(m, quadratic, dlogits, w2t, Z, H, dZ, a, b)


@njit(cache=True, nogil=True)
def step_models(models, theta, i0, i1, P1, quadratic, zero, Z, H, logits, loss, labels, scale,
                dlogits, w2t, g2t, dZ, grad, order, starts):
    """The gradient of each model listed, one after another (module docstring)."""
    N, w, p = H.shape[1], H.shape[2], logits.shape[2]
    for m in models:
        w2_transpose(theta[m], P1, p, w2t[m])
        rows_step(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, loss, labels, scale,
                  dlogits, w2t, dZ, 0, N)
        backward_w2(m, P1, dlogits, H, g2t, grad, 0, p)
        backward_w1(m, order, starts, quadratic, dZ, grad, 0, w)


@njit(cache=True, nogil=True)
def forward_logits(models, theta, i0, i1, P1, quadratic, zero, Zs, Hs, logits, r0, r1):
    """Ŷ of each model listed for rows r0 ≤ n < r1, BLOCK rows at a time through the scratch
    Zs, Hs (module docstring)."""
    p = logits.shape[2]
    for m in models:
        t = theta[m]
        for a in range(r0, r1, BLOCK):
            b = min(a + BLOCK, r1)
            first_layer_rows(t, i0[a:b], i1[a:b], quadratic, zero, Zs, Hs, 0, b - a)
            forward_product(Hs, t[P1:], p, 0, b - a, logits[m][a:b])
