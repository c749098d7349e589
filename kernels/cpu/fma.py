"""Fixed-order FMA micro-kernels for the three products of a step and the forward's Ŷ.

`fma(a, b, c)` is a·b + c with one rounding (LLVM's llvm.fma through numba.extending.intrinsic):
the FMA instruction where the target has one (vfmadd on x86-64 with FMA3, fmla on ARM), glibc's
correctly rounded fma / fmaf where it has none. Either way one IEEE operation: the same bits on
every CPU. No fastmath flag anywhere (not even 'contract', which fuses on some targets only).

Every output is one chain of FMAs from 0 in the order written below, nothing reassociated:

    yt[j, n]  = Ŷ[n, j]   = Σ_k H[n, k] W2[k, j]     s ← fma(Hᵀ[k, n], W2[k, j], s), k = 0 … w−1
    g2t[j, k] = ∇W2[k, j] = Σ_n dŶ[n, j] H[n, k]    s ← fma(dŶ[n, j], H[n, k], s), n = 0 … N−1
    dH[n, k]              = Σ_j dŶ[n, j] W2[k, j]    s ← fma(dŶ[n, j], W2ᵀ[j, k], s), j = 0 … p−1

(s = 0 before the first term.) Speed comes from what never reorders a sum: the innermost loop
runs over independent outputs (columns n of Ŷᵀ, columns k of ∇W2ᵀ and dH, contiguous), which LLVM's
loop vectorizer turns into vector FMAs of any width; the register blocking is fixed in the source
(two output rows × four terms per pass for Ŷᵀ and ∇W2ᵀ, two rows × four j for dH), and w2_grad's
cache tiles (TILE rows of H) only resume each chain where it stopped. So the blocking, the vector
width, the thread that runs a range and the split into ranges never change a bit. forward_product
streams Hᵀ whole for each pair of j (measured faster than tiles of 32 to 1424 columns of Hᵀ on
the 2-core Zen 3: the per-tile overhead outweighed the cache reuse; bench/RESULTS.md).

Composable: every function here is @njit (nogil) and callable from other numba code. Signatures
(arrays C-contiguous in their last axis; float32 or float64, one type per call):
    fma(a, b, c) -> a·b + c                                         scalars of one float type
    forward_product(ht [w, NP], w2 [≥ w·p], p, c0, c1, yt [p, NP])  yt[:, c0:c1]; c0, c1 multiples
                                                                    of 16 ≤ NP (W2[k, j] = w2[k·p + j])
    w2_grad(H [N, w], dY [N, p], j0, j1, g2t [p, w])                g2t[j0:j1]
    hidden_grad(dY [N, p], w2t [p, w], n0, n1, dH [N, w])           dH[n0:n1]
"""
from __future__ import annotations

from numba import njit, types
from numba.extending import intrinsic

TILE = 128  # rows of H per cache tile of w2_grad


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c rounded once (llvm.fma), for three scalars of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)                                  # llvmlite: llvm.fma
    return a(a, b, c), codegen


@njit(cache=True, nogil=True, inline="always")
def rank4_update(o0, o1, x0, x1, x2, x3, a0, a1, a2, a3, b0, b1, b2, b3):
    """The micro-kernel: two output rows, four terms each, in order. For c < len(o0):
    o0[c] ← fma(x3[c], a3, fma(x2[c], a2, fma(x1[c], a1, fma(x0[c], a0, o0[c])))) and o1[c]
    likewise with b0 … b3 (o0, o1, x0 … x3: 1-D rows of one length, o0 and o1 distinct)."""
    for c in range(o0.shape[0]):
        u0, u1, u2, u3 = x0[c], x1[c], x2[c], x3[c]
        o0[c] = fma(u3, a3, fma(u2, a2, fma(u1, a1, fma(u0, a0, o0[c]))))
        o1[c] = fma(u3, b3, fma(u2, b2, fma(u1, b1, fma(u0, b0, o1[c]))))


@njit(cache=True, nogil=True, inline="always")
def rank4_update1(o, x0, x1, x2, x3, a0, a1, a2, a3):
    """rank4_update for one output row (the last row of an odd count)."""
    for c in range(o.shape[0]):
        o[c] = fma(x3[c], a3, fma(x2[c], a2, fma(x1[c], a1, fma(x0[c], a0, o[c]))))


@njit(cache=True, nogil=True, inline="always")
def axpy2(o0, o1, x, a, b):
    """o0[c] ← fma(x[c], a, o0[c]) and o1[c] ← fma(x[c], b, o1[c]) (the term tails)."""
    for c in range(o0.shape[0]):
        u = x[c]
        o0[c] = fma(u, a, o0[c])
        o1[c] = fma(u, b, o1[c])


@njit(cache=True, nogil=True, inline="always")
def axpy(o, x, a):
    """o[c] ← fma(x[c], a, o[c]) for c < len(o) (one row, one term)."""
    for c in range(o.shape[0]):
        o[c] = fma(x[c], a, o[c])


@njit(cache=True, nogil=True)
def forward_product(ht, w2, p, c0, c1, yt):
    """yt[j, c] = Σ_k ht[k, c] w2[k·p + j] (k in order, one FMA each) for every j < p and the
    columns c0 ≤ c < c1."""
    w = ht.shape[0]
    for j in range(0, p - 1, 2):                                   # two j per pass
        y0, y1 = yt[j, c0:c1], yt[j + 1, c0:c1]
        y0[:] = 0
        y1[:] = 0
        for k in range(0, w - 3, 4):                               # four k per pass, in order
            r0, r1, r2, r3 = w2[k * p + j:], w2[(k + 1) * p + j:], w2[(k + 2) * p + j:], \
                w2[(k + 3) * p + j:]
            rank4_update(y0, y1, ht[k, c0:c1], ht[k + 1, c0:c1], ht[k + 2, c0:c1],
                         ht[k + 3, c0:c1], r0[0], r1[0], r2[0], r3[0], r0[1], r1[1], r2[1], r3[1])
        for k in range(w - w % 4, w):
            axpy2(y0, y1, ht[k, c0:c1], w2[k * p + j], w2[k * p + j + 1])
    if p % 2:                                                      # the last j of an odd p
        j = p - 1
        y0 = yt[j, c0:c1]
        y0[:] = 0
        for k in range(0, w - 3, 4):
            rank4_update1(y0, ht[k, c0:c1], ht[k + 1, c0:c1], ht[k + 2, c0:c1], ht[k + 3, c0:c1],
                          w2[k * p + j], w2[(k + 1) * p + j], w2[(k + 2) * p + j],
                          w2[(k + 3) * p + j])
        for k in range(w - w % 4, w):
            axpy(y0, ht[k, c0:c1], w2[k * p + j])


@njit(cache=True, nogil=True)
def w2_grad(H, dY, j0, j1, g2t):
    """g2t[j, k] = Σ_n dY[n, j] H[n, k] (n in order, one FMA each) for j0 ≤ j < j1, every k."""
    N = H.shape[0]
    g2t[j0:j1] = 0
    for t0 in range(0, N, TILE):                                   # a [TILE, w] tile of H
        t1 = min(t0 + TILE, N)
        for j in range(j0, j1 - 1, 2):                             # two j per pass
            g0, g1 = g2t[j], g2t[j + 1]
            for n in range(t0, t1 - 3, 4):                         # four n per pass, in order
                e0, e1, e2, e3 = dY[n, j:], dY[n + 1, j:], dY[n + 2, j:], dY[n + 3, j:]
                rank4_update(g0, g1, H[n], H[n + 1], H[n + 2], H[n + 3],
                             e0[0], e1[0], e2[0], e3[0], e0[1], e1[1], e2[1], e3[1])
            for n in range(t1 - (t1 - t0) % 4, t1):
                axpy2(g0, g1, H[n], dY[n, j], dY[n, j + 1])
        if (j1 - j0) % 2:                                          # the last j of an odd range
            j, g0 = j1 - 1, g2t[j1 - 1]
            for n in range(t0, t1 - 3, 4):
                rank4_update1(g0, H[n], H[n + 1], H[n + 2], H[n + 3],
                              dY[n, j], dY[n + 1, j], dY[n + 2, j], dY[n + 3, j])
            for n in range(t1 - (t1 - t0) % 4, t1):
                axpy(g0, H[n], dY[n, j])


@njit(cache=True, nogil=True)
def hidden_grad(dY, w2t, n0, n1, dH):
    """dH[n, k] = Σ_j dY[n, j] w2t[j, k] (j in order, one FMA each) for n0 ≤ n < n1, every k."""
    p = w2t.shape[0]
    dH[n0:n1] = 0
    for n in range(n0, n1 - 1, 2):                                 # two n per pass
        d0, d1 = dH[n], dH[n + 1]
        for j in range(0, p - 3, 4):                               # four j per pass, in order
            e, f = dY[n, j:], dY[n + 1, j:]
            rank4_update(d0, d1, w2t[j], w2t[j + 1], w2t[j + 2], w2t[j + 3],
                         e[0], e[1], e[2], e[3], f[0], f[1], f[2], f[3])
        for j in range(p - p % 4, p):
            axpy2(d0, d1, w2t[j], dY[n, j], dY[n + 1, j])
    if (n1 - n0) % 2:                                              # the last n of an odd range
        n, d0 = n1 - 1, dH[n1 - 1]
        for j in range(0, p - 3, 4):
            e = dY[n, j:]
            rank4_update1(d0, w2t[j], w2t[j + 1], w2t[j + 2], w2t[j + 3], e[0], e[1], e[2], e[3])
        for j in range(p - p % 4, p):
            axpy(d0, w2t[j], dY[n, j])
