"""CPU forward and backward of the two-layer net for many models: numba loops, one model per task.

Fused: Z = X W1 (a gather), H = σ(Z), Ŷ = H W2 (forward); and, given ∂L/∂Ŷ, ∇W2 = Hᵀ dŶ,
dH = dŶ W2ᵀ, dZ = dH ⊙ σ'(Z), ∇W1 = Xᵀ dZ (backward). The loss gradient and the update stay in
torch (elementwise over all models at once).

Shapes (M models, N training rows, width w, p classes, P1 = d_in·w; θ as the torch backend lays
it out, one row per model):
    theta, grad     [M, S]       W1 = row[:P1] as [d_in, w], W2 = row[P1 : P1 + w·p] as [w, p]
    i0, i1          [N] int64    the two W1 rows each sample adds (X = e_a + e_b, or [e_a; e_b])
    Z, H            [M, N, w]    X W1 and σ(X W1)
    w2t             [M, p, w]    W2ᵀ (written by forward, read by backward)
    logits, dlogits [M, N, p]
    g2t             [M, p, w]    ∇W2ᵀ (work buffer)

Every inner loop runs over the width, contiguous, so LLVM vectorizes it. The sums:
    Ŷ[n, j]   = Σ_k H[n, k] W2[k, j]     a dot product over k, compiled with reassociation allowed
                                         (LLVM's vector partial sums: the order is fixed by the
                                         compiled loop and w alone)
    ∇W2[k, j] = Σ_n H[n, k] dŶ[n, j]     n = 0 … N−1 in order (vectorized across k)
    dH[n, k]  = Σ_j dŶ[n, j] W2[k, j]    j = 0 … p−1 in order (vectorized across k)
    ∇W1[r, :] = Σ dZ[n, :] over the samples with row r: position 0 of samples 0 … N−1, then
                position 1 (the torch backend's index_add_ order), times 2 for σ = x² (σ' = 2x)
The unrolled loops (four j or four n per pass over a row) keep each sum's order, written out
with parentheses. No multiply–add is fused (no fast-math contraction). The models of a call run
one after another through the same compiled loops with the same trip counts, so model m's bits do
not depend on M, on which thread runs it (the caller's threads over models), on alignment or on
MKL: batch invariance by construction. They differ from MKL's GEMMs in the reference by summation
order only. The kernels release the GIL (nogil), so a caller's threads run them in parallel.

Limits: CPU; float32 or float64 (one compiled variant each, cached on disk); σ = ReLU
(σ'(0) = 0, NaN propagates) or x².
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _forward_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits):
    """One call runs the models listed in `models` in turn; model m owns Z[m], H[m], w2t[m] and
    logits[m]."""
    N, w = Z.shape[1], Z.shape[2]
    p = logits.shape[2]
    for m in models:
        for k in range(w):                                         # W2ᵀ [p, w]
            for j in range(p):
                w2t[m, j, k] = theta[m, P1 + k * p + j]
        for n in range(N):
            a, b = i0[n] * w, i1[n] * w
            for k in range(w):                                     # Z = W1[a] + W1[b]
                z = theta[m, a + k] + theta[m, b + k]
                Z[m, n, k] = z
                if quadratic:
                    H[m, n, k] = z * z
                elif z <= 0:
                    H[m, n, k] = 0
                else:
                    H[m, n, k] = z                                 # NaN stays NaN
            j = 0
            while j + 4 <= p:                                      # Ŷ[n, j] = H[n] · W2ᵀ[j],
                s0, s1, s2, s3 = zero, zero, zero, zero            # four j per pass over H[n]
                for k in range(w):
                    h = H[m, n, k]
                    s0 += h * w2t[m, j, k]
                    s1 += h * w2t[m, j + 1, k]
                    s2 += h * w2t[m, j + 2, k]
                    s3 += h * w2t[m, j + 3, k]
                logits[m, n, j] = s0
                logits[m, n, j + 1] = s1
                logits[m, n, j + 2] = s2
                logits[m, n, j + 3] = s3
                j += 4
            while j < p:
                s0 = zero
                for k in range(w):
                    s0 += H[m, n, k] * w2t[m, j, k]
                logits[m, n, j] = s0
                j += 1


@njit(cache=True, nogil=True)
def _backward_kernel(models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad):
    """One call runs the models listed in `models` in turn; model m owns g2t[m], dH[m] and
    grad[m]."""
    N, w = Z.shape[1], Z.shape[2]
    p = dlogits.shape[2]
    for m in models:
        for j in range(p):
            for k in range(w):
                g2t[m, j, k] = 0
        n = 0
        while n + 4 <= N:                                          # ∇W2ᵀ[j] += dŶ[n, j] H[n],
            for j in range(p):                                     # four n per pass, in order
                d0, d1 = dlogits[m, n, j], dlogits[m, n + 1, j]
                d2, d3 = dlogits[m, n + 2, j], dlogits[m, n + 3, j]
                for k in range(w):
                    g2t[m, j, k] = ((((g2t[m, j, k] + d0 * H[m, n, k]) + d1 * H[m, n + 1, k])
                                     + d2 * H[m, n + 2, k]) + d3 * H[m, n + 3, k])
            n += 4
        while n < N:
            for j in range(p):
                d0 = dlogits[m, n, j]
                for k in range(w):
                    g2t[m, j, k] += d0 * H[m, n, k]
            n += 1
        for k in range(w):
            for j in range(p):
                grad[m, P1 + k * p + j] = g2t[m, j, k]
        for n in range(N):                                         # dH[n] = Σ_j dŶ[n, j] W2ᵀ[j]
            for k in range(w):
                dH[m, n, k] = 0
            j = 0
            while j + 4 <= p:                                      # four j per pass, in order
                d0, d1 = dlogits[m, n, j], dlogits[m, n, j + 1]
                d2, d3 = dlogits[m, n, j + 2], dlogits[m, n, j + 3]
                for k in range(w):
                    dH[m, n, k] = ((((dH[m, n, k] + d0 * w2t[m, j, k]) + d1 * w2t[m, j + 1, k])
                                    + d2 * w2t[m, j + 2, k]) + d3 * w2t[m, j + 3, k])
                j += 4
            while j < p:
                d0 = dlogits[m, n, j]
                for k in range(w):
                    dH[m, n, k] += d0 * w2t[m, j, k]
                j += 1
            for k in range(w):                                     # dZ = dH ⊙ σ'(Z) (2 later)
                if quadratic:
                    dH[m, n, k] = dH[m, n, k] * Z[m, n, k]
                elif not Z[m, n, k] > 0:
                    dH[m, n, k] = 0
        for r in range(P1):
            grad[m, r] = 0
        for n in range(N):                                         # ∇W1 = Xᵀ dZ, position 0
            base = i0[n] * w
            for k in range(w):
                grad[m, base + k] += dH[m, n, k]
        for n in range(N):                                         # then position 1
            base = i1[n] * w
            for k in range(w):
                grad[m, base + k] += dH[m, n, k]
        if quadratic:
            for r in range(P1):
                grad[m, r] += grad[m, r]                           # × 2, exact


def forward(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits) -> None:
    """Z, H, w2t and logits of the models listed in `models` (int64 indices) from θ (numpy
    arrays; module docstring); the other models' rows are left as they are. `zero` is 0 as a
    numpy scalar of the working dtype."""
    _forward_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits)


def backward(models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad) -> None:
    """grad[m, :P1 + w·p] of the models m listed in `models` from dlogits and forward's Z, H,
    w2t (module docstring); every other element of grad is left as it is."""
    _backward_kernel(models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad)
