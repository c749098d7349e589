"""A chunk of full-batch training steps of many small models in one native call: the CPU twin of the
fused Triton kernel, for the torch backend's portable numerics.

Fused, per model m listed in `models` and per step k of the chunk, with no Python in between:

    W2ᵀ, Z = X W1, H = σ(Z), Ŷ = H W2     grad.w2_transpose, grad.forward_rows (fma.forward_product)
    dŶ = (Ŷ − Y)·scale                    update._mse_grad_kernel (MSE, mean or sum by `scale`)
    ∇W2, dZ, ∇W1                          grad.backward_w2, backward_hidden, backward_w1
    g ← g + wd·θ;  θ ← θ + (−lr_k)·g      update._gd_step_kernel (GD with coupled weight decay)

Every stage is the very @njit function the per-step path calls (kernels/cpu/grad.py, update.py),
called on the same model's rows in the same order, so each model's bits are those of the per-step
path by construction; models are independent, so running all steps of one model before the next
(its θ and buffers stay in cache) changes no bit. Statistics are not computed here: the caller
runs the logged steps on the per-step path and this loop between them.

Shapes (as kernels/cpu/grad.py; S the row stride of θ, P1 = d_in·w):
    theta, grad [M, S];  i0, i1, labels [N] int64;  neg_lr [K, M] (−lr of each of the K steps);
    wd [M];  Z, H, dH [M, N, w];  w2t, g2t [M, p, w];  ht [w, NP], yt [p, NP] (grad.forward_portable's
    scratch);  logits, dlogits [M, N, p].  zero and scale: numpy scalars of the working dtype.

Limits: CPU; float32 or float64; σ = ReLU or x²; MSE loss; GD (no momentum), no gradient filter,
⊥Grad or fixed norm; one thread per call (callers run shards of models on threads; nogil).
"""
from __future__ import annotations

from numba import njit

from .grad import backward_hidden, backward_w1, backward_w2, forward_rows, w2_transpose
from .update import _gd_step_kernel, _mse_grad_kernel


@njit(cache=True, nogil=True)
def _chunk_kernel(models, theta, grad, i0, i1, labels, P1, quadratic, zero, scale, neg_lr, wd,
                  Z, H, dH, w2t, g2t, ht, yt, logits, dlogits):
    N, w, p, S = Z.shape[1], Z.shape[2], logits.shape[2], theta.shape[1]
    for m in models:
        for k in range(neg_lr.shape[0]):
            w2_transpose(theta[m], P1, p, w2t[m])
            forward_rows(m, theta, i0, i1, P1, quadratic, zero, Z, H, ht, yt, logits, 0, N)
            _mse_grad_kernel(logits[m:m + 1], labels, scale, dlogits[m:m + 1])
            backward_w2(m, P1, dlogits, H, g2t, grad, 0, p)
            backward_hidden(m, quadratic, dlogits, Z, w2t, dH, 0, N)
            backward_w1(m, i0, i1, P1, quadratic, dH, grad, 0, w)
            _gd_step_kernel(theta[m:m + 1], grad[m:m + 1], neg_lr[k, m:m + 1], wd[m:m + 1], S)


def mse_gd_chunk(models, theta, grad, i0, i1, labels, P1, quadratic, zero, scale, neg_lr, wd,
                 Z, H, dH, w2t, g2t, ht, yt, logits, dlogits) -> None:
    """Advance the models listed in `models` (int64 indices) by neg_lr.shape[0] steps of MSE
    full-batch GD with weight decay, in place on theta (module docstring for shapes); the other
    models' rows are left as they are. neg_lr and wd are C-contiguous arrays of the working dtype."""
    _chunk_kernel(models, theta, grad, i0, i1, labels, P1, quadratic, zero, scale, neg_lr, wd,
                  Z, H, dH, w2t, g2t, ht, yt, logits, dlogits)
