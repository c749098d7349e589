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

Every inner loop runs over the width, contiguous, through 1-D row views, so LLVM vectorizes it
(indexed as θ[m, a + k] with a row offset read from i0/i1, the gather and the ∇W1 scatter stayed
scalar: 4.5× and 5× slower). ReLU and its mask are selects, not branches. The sums:
    Ŷ[n, j]   = Σ_k H[n, k] W2[k, j]     k = 0 … w−1 in order (forward_portable: vectorized
                                         across n through Hᵀ, eight k per pass, parenthesized);
                                         forward (numerics "host"): a dot product over k compiled
                                         with reassociation allowed, LLVM's vector partial sums,
                                         whose order depends on the host's vector width
    ∇W2[k, j] = Σ_n H[n, k] dŶ[n, j]     n = 0 … N−1 in order (vectorized across k)
    dH[n, k]  = Σ_j dŶ[n, j] W2[k, j]    j = 0 … p−1 in order (vectorized across k)
    ∇W1[r, :] = Σ dZ[n, :] over the samples with row r: position 0 of samples 0 … N−1, then
                position 1 (the torch backend's index_add_ order), times 2 for σ = x² (σ' = 2x)
The unrolled loops (eight or four j or k, or four n, per pass over a row) keep each sum's order,
written out with parentheses. No multiply–add is fused: without fastmath numba gives LLVM no
`contract` flag, so it never forms an FMA. Every loop but forward's Ŷ sum therefore computes the
same bits whatever vector width LLVM compiles it for (SSE2, AVX2, AVX-512, or NEON): vectorizing
across independent outputs never changes an order. tests/test_portability.py checks it under
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES targets from generic x86-64 to AVX-512. The models of a call run
one after another through the same compiled loops with the same trip counts, so model m's bits do
not depend on M, on which thread runs it (the caller's threads over models), on alignment or on
MKL: batch invariance by construction. They differ from MKL's GEMMs in the reference by summation
order only. The kernels release the GIL (nogil), so a caller's threads run them in parallel.

Limits: CPU; float32 or float64 (one compiled variant each, cached on disk); σ = ReLU
(σ'(0) = 0, NaN propagates) or x².
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _first_layer(t, i0, i1, P1, p, quadratic, zero, Zm, Hm, w2tm):
    """One model's W2ᵀ [p, w] (w2tm), Z = X W1 = W1[a] + W1[b] and H = σ(Z) (Zm, Hm [N, w]) from
    its θ row t: elementwise, one rounding per entry, no reduction (the same bits in every kernel
    that inlines it)."""
    N, w = Zm.shape
    for j in range(p):                                             # W2ᵀ [p, w]
        row = w2tm[j]
        for k in range(w):
            row[k] = t[P1 + k * p + j]
    for n in range(N):
        a, b = i0[n] * w, i1[n] * w                                # Z = W1[a] + W1[b]
        ra, rb, zr, hr = t[a:a + w], t[b:b + w], Zm[n], Hm[n]     # (1-D views vectorize)
        if quadratic:
            for k in range(w):
                z = ra[k] + rb[k]
                zr[k] = z
                hr[k] = z * z
        else:
            for k in range(w):
                z = ra[k] + rb[k]
                zr[k] = z
                hr[k] = z if not z <= 0 else zero                  # NaN stays NaN


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _forward_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits):
    """One call runs the models listed in `models` in turn; model m owns Z[m], H[m], w2t[m] and
    logits[m]."""
    N, w = Z.shape[1], Z.shape[2]
    p = logits.shape[2]
    for m in models:
        t = theta[m]
        _first_layer(t, i0, i1, P1, p, quadratic, zero, Z[m], H[m], w2t[m])
        for n in range(N):
            j = 0
            hr = H[m, n]
            while j + 8 <= p:                                      # Ŷ[n, j] = H[n] · W2ᵀ[j],
                s0, s1, s2, s3 = zero, zero, zero, zero            # eight j per pass over H[n]
                s4, s5, s6, s7 = zero, zero, zero, zero
                a0, a1, a2, a3 = w2t[m, j], w2t[m, j + 1], w2t[m, j + 2], w2t[m, j + 3]
                a4, a5, a6, a7 = w2t[m, j + 4], w2t[m, j + 5], w2t[m, j + 6], w2t[m, j + 7]
                for k in range(w):
                    h = hr[k]
                    s0 += h * a0[k]
                    s1 += h * a1[k]
                    s2 += h * a2[k]
                    s3 += h * a3[k]
                    s4 += h * a4[k]
                    s5 += h * a5[k]
                    s6 += h * a6[k]
                    s7 += h * a7[k]
                logits[m, n, j] = s0
                logits[m, n, j + 1] = s1
                logits[m, n, j + 2] = s2
                logits[m, n, j + 3] = s3
                logits[m, n, j + 4] = s4
                logits[m, n, j + 5] = s5
                logits[m, n, j + 6] = s6
                logits[m, n, j + 7] = s7
                j += 8
            while j + 4 <= p:                                      # then four j per pass
                s0, s1, s2, s3 = zero, zero, zero, zero
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
            d, z = dH[m, n], Z[m, n]
            for k in range(w):
                d[k] = 0
            j = 0
            while j + 8 <= p:                                      # eight j per pass, in order
                d0, d1 = dlogits[m, n, j], dlogits[m, n, j + 1]
                d2, d3 = dlogits[m, n, j + 2], dlogits[m, n, j + 3]
                d4, d5 = dlogits[m, n, j + 4], dlogits[m, n, j + 5]
                d6, d7 = dlogits[m, n, j + 6], dlogits[m, n, j + 7]
                a0, a1, a2, a3 = w2t[m, j], w2t[m, j + 1], w2t[m, j + 2], w2t[m, j + 3]
                a4, a5, a6, a7 = w2t[m, j + 4], w2t[m, j + 5], w2t[m, j + 6], w2t[m, j + 7]
                for k in range(w):
                    d[k] = ((((((((d[k] + d0 * a0[k]) + d1 * a1[k]) + d2 * a2[k]) + d3 * a3[k])
                             + d4 * a4[k]) + d5 * a5[k]) + d6 * a6[k]) + d7 * a7[k])
                j += 8
            while j + 2 <= p:                                      # two j per pass, in order
                d0, d1 = dlogits[m, n, j], dlogits[m, n, j + 1]
                a0, a1 = w2t[m, j], w2t[m, j + 1]
                for k in range(w):
                    d[k] = (d[k] + d0 * a0[k]) + d1 * a1[k]
                j += 2
            while j < p:
                d0, a0 = dlogits[m, n, j], w2t[m, j]
                for k in range(w):
                    d[k] += d0 * a0[k]
                j += 1
            if quadratic:                                          # dZ = dH ⊙ σ'(Z) (2 later)
                for k in range(w):
                    d[k] = d[k] * z[k]
            else:
                for k in range(w):
                    d[k] = d[k] if z[k] > 0 else 0
        g = grad[m]
        for r in range(P1):
            g[r] = 0
        for n in range(N):                                         # ∇W1 = Xᵀ dZ, position 0
            a = i0[n] * w
            row, d = g[a:a + w], dH[m, n]
            for k in range(w):
                row[k] += d[k]
        for n in range(N):                                         # then position 1
            b = i1[n] * w
            row, d = g[b:b + w], dH[m, n]
            for k in range(w):
                row[k] += d[k]
        if quadratic:
            for r in range(P1):
                grad[m, r] += grad[m, r]                           # × 2, exact


@njit(cache=True, nogil=True)
def _forward_portable_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, ht, yt,
                             logits):
    """As _forward_kernel, with Ŷ summed over k in order; ht [w, NP] and yt [p, NP] are scratch
    (Hᵀ and Ŷᵀ of the model in hand, NP ≥ N columns, those from N on zero in ht)."""
    N, w = Z.shape[1], Z.shape[2]
    p, NP = logits.shape[2], ht.shape[1]
    for m in models:
        t = theta[m]
        _first_layer(t, i0, i1, P1, p, quadratic, zero, Z[m], H[m], w2t[m])
        h = H[m]
        for k in range(w):                                         # Hᵀ [w, N]
            r = ht[k]
            for n in range(N):
                r[n] = h[n, k]
        for j in range(p):                                         # Ŷᵀ[j] = Σ_k W2[k, j] Hᵀ[k],
            y = yt[j]                                              # k in order, eight per pass,
            for n in range(NP):                                    # all NP columns (no tail)
                y[n] = zero
            w2 = t[P1 + j:]                                        # W2[k, j] = w2[k·p]
            k = 0
            while k + 8 <= w:
                c0, c1, c2, c3 = w2[k * p], w2[(k + 1) * p], w2[(k + 2) * p], w2[(k + 3) * p]
                c4, c5, c6, c7 = w2[(k + 4) * p], w2[(k + 5) * p], w2[(k + 6) * p], w2[(k + 7) * p]
                h0, h1, h2, h3 = ht[k], ht[k + 1], ht[k + 2], ht[k + 3]
                h4, h5, h6, h7 = ht[k + 4], ht[k + 5], ht[k + 6], ht[k + 7]
                for n in range(NP):
                    y[n] = ((((((((y[n] + h0[n] * c0) + h1[n] * c1) + h2[n] * c2) + h3[n] * c3)
                              + h4[n] * c4) + h5[n] * c5) + h6[n] * c6) + h7[n] * c7)
                k += 8
            while k < w:
                c0, h0 = w2[k * p], ht[k]
                for n in range(NP):
                    y[n] = y[n] + h0[n] * c0
                k += 1
        for n in range(N):                                         # Ŷ = (Ŷᵀ)ᵀ
            out = logits[m, n]
            for j in range(p):
                out[j] = yt[j, n]


def forward_portable(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, ht, yt,
                     logits) -> None:
    """forward with Ŷ[n, j] summed over k = 0 … w−1 in order: the same bits on every CPU
    (numerics "portable"). ht [w, NP] and yt [p, NP]: scratch of the working dtype, NP ≥ N
    (scratch_columns(N)), ht zero-filled once (its columns N … NP−1 are never written: padding
    N to a multiple of 16 leaves the vectorized loop no scalar tail; a column's sum never reads
    another column, so NP changes no bit)."""
    _forward_portable_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, ht, yt,
                             logits)


def scratch_columns(N: int) -> int:
    """NP for forward_portable's scratch: N rounded up to a multiple of 16."""
    return -(-N // 16) * 16


def forward(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits) -> None:
    """Z, H, w2t and logits of the models listed in `models` (int64 indices) from θ (numpy
    arrays; module docstring); the other models' rows are left as they are. `zero` is 0 as a
    numpy scalar of the working dtype."""
    _forward_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits)


def backward(models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad) -> None:
    """grad[m, :P1 + w·p] of the models m listed in `models` from dlogits and forward's Z, H,
    w2t (module docstring); every other element of grad is left as it is."""
    _backward_kernel(models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad)
