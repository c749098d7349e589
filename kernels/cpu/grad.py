"""CPU forward and backward of the two-layer net for many models: numba loops, one model per task.

Fused: Z = X W1 (a gather), H = σ(Z), Ŷ = H W2 (forward); and, given ∂L/∂Ŷ, ∇W2 = Hᵀ dŶ,
dH = dŶ W2ᵀ, dZ = dH ⊙ σ'(Z), ∇W1 = Xᵀ dZ (backward). The loss gradient and the update stay in
torch (elementwise over all models at once).

Shapes (M models, N training rows, width w, p classes, P1 = d_in·w; θ as the torch backend lays
it out, one row per model):
    theta, grad     [M, S]       W1 = row[:P1] as [d_in, w], W2 = row[P1 : P1 + w·p] as [w, p]
    i0, i1          [N] int64    the two W1 rows each sample adds (X = e_a + e_b, or [e_a; e_b])
    order, starts   [2N], [d_in + 1] int64   segment.sample_order(i0, i1, d_in) (backward)
    Z, H            [M, N, w]    X W1 (written for σ = x² only) and σ(X W1)
    dZ              [M, N, w]    dŶ W2ᵀ ⊙ σ'(Z) (work buffer; the callers' dH)
    w2t             [M, p, w]    W2ᵀ (written by forward, read by backward)
    logits, dlogits [M, N, p]
    g2t             [M, p, w]    ∇W2ᵀ (work buffer)

Every inner loop runs over contiguous memory through 1-D row views, so LLVM vectorizes it
(indexed as θ[m, a + k] with a row offset read from i0/i1, the gather stayed scalar: 4.5×
slower). ReLU and its mask are selects, not branches. The sums:
    Ŷ[n, j]   = Σ_k H[n, k] W2[k, j]     forward_portable: fma.forward_product, one FMA per term,
                                         k = 0 … w−1 in order (straight into logits); forward
                                         (numerics "host"): a dot product over k compiled with
                                         reassociation allowed, LLVM's vector partial sums, whose
                                         order depends on the host's vector width
    ∇W2[k, j] = Σ_n H[n, k] dŶ[n, j]     fma.w2_grad: one FMA per term, n = 0 … N−1 in order
    dH[n, k]  = Σ_j dŶ[n, j] W2[k, j]    fma.hidden_grad_dz: one FMA per term, j = 0 … p−1 in
                                         order, and as each sum is stored dZ = dH·Z (x²; the 2
                                         is ∇W1's final doubling) or dH where H > 0, else 0
                                         (ReLU: H > 0 exactly where Z > 0; NaN: 0), the
                                         product tile's epilogue (no dZ pass over memory)
    ∇W1[r, :] = Σ dZ[n, :] over the samples with row r: position 0 of samples 0 … N−1, then
                position 1 (the torch backend's index_add_ order), times 2 for σ = x² (σ' = 2x);
                adds only, nothing to fuse; segment.w1_grad keeps a row's sums in registers
The three products are fma.product's register tiles (the chains above, in registers). numba's
disk cache keys a function on its own file only: after a change to fma.py or segment.py, delete
the cached kernels/cpu/__pycache__ (or change this file) or the functions here keep the old
kernels.
The FMAs are explicit (kernels/cpu/fma.py: llvm.fma, one rounding), nothing else is fused (no
fastmath, so LLVM gets no `contract` flag): every loop but the host forward's Ŷ sum computes the
same bits whatever the CPU and vector width (SSE2 with glibc's fma, AVX2, AVX-512, NEON):
vectorizing across independent outputs never changes an order. tests/backends/test_portability.py
checks it under NUMBA_CPU_NAME / NUMBA_CPU_FEATURES targets from generic x86-64 to AVX-512, and
tests/kernels/test_kernel_fma.py reads the compiled code. The models of a call run one after
another through the same compiled loops, so model m's bits do not depend on M, on which thread
runs it, on alignment or on MKL: batch invariance by construction. The range functions
(forward_rows, backward_w2, backward_w2_units, backward_hidden, backward_w1) compute disjoint
outputs of one model, each whole, so a caller may run them on several threads
(grokfast.backends.torch.split) with the bits of the one-call kernels. They differ from MKL's GEMMs in the reference by summation order
and fusion only. The kernels release the GIL (nogil).

Limits: CPU; float32 or float64 (one compiled variant each, cached on disk); σ = ReLU
(σ'(0) = 0, NaN propagates) or x².
"""
from __future__ import annotations

from numba import njit

from .fma import forward_product, hidden_grad_dz, w2_grad, w2_grad_units
from .layout import transpose
from .segment import sample_order, w1_grad  # noqa: F401 (sample_order: the callers' order)


@njit(cache=True, nogil=True)
def w2_transpose(t, P1, p, w2tm):
    """W2ᵀ [p, w] (w2tm) of one model from its θ row t: a copy (layout.transpose)."""
    w = w2tm.shape[1]
    transpose(t[P1:P1 + w * p].reshape((w, p)), w2tm)


@njit(cache=True, nogil=True)
def first_layer_rows(t, i0, i1, quadratic, zero, Zm, Hm, r0, r1):
    """H = σ(Z), Z = X W1 = W1[a] + W1[b] (Hm [N, w]) of the rows r0 ≤ n < r1 of one model from
    its θ row t: elementwise, one rounding per entry, no reduction. Z itself (Zm [N, w]) is
    written for σ = x² only, whose σ' needs it; ReLU's σ' reads H (H > 0 exactly where Z > 0),
    and its Zm is left as it is."""
    w = Hm.shape[1]
    for n in range(r0, r1):
        a, b = i0[n] * w, i1[n] * w                                # Z = W1[a] + W1[b]
        ra, rb, hr = t[a:a + w], t[b:b + w], Hm[n]                # (1-D views vectorize)
        if quadratic:
            zr = Zm[n]
            for k in range(w):
                z = ra[k] + rb[k]
                zr[k] = z
                hr[k] = z * z
        else:
            for k in range(w):
                z = ra[k] + rb[k]
                hr[k] = z if not z <= 0 else zero                  # NaN stays NaN


@njit(cache=True, nogil=True, inline="always")
def _first_layer(t, i0, i1, P1, p, quadratic, zero, Zm, Hm, w2tm):
    """One model's W2ᵀ, Z and H (w2_transpose, first_layer_rows over every row)."""
    w2_transpose(t, P1, p, w2tm)
    first_layer_rows(t, i0, i1, quadratic, zero, Zm, Hm, 0, Zm.shape[0])


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
def backward_w2(m, P1, dlogits, H, g2t, grad, j0, j1):
    """∇W2[:, j] of model m for j0 ≤ j < j1: g2t[m, j] (fma.w2_grad), then into grad[m]."""
    w, p = H.shape[2], dlogits.shape[2]
    w2_grad(H[m], dlogits[m], j0, j1, g2t[m])
    transpose(g2t[m, j0:j1], grad[m, P1:P1 + w * p].reshape((w, p))[:, j0:j1])


@njit(cache=True, nogil=True)
def backward_w2_units(m, P1, dlogits, H, g2t, grad, k0, k1):
    """∇W2[k, :] of model m for the hidden units k0 ≤ k < k1: g2t[m, :, k] (fma.w2_grad_units),
    then into grad[m] (rows k of W2: contiguous in θ)."""
    w, p = H.shape[2], dlogits.shape[2]
    w2_grad_units(H[m], dlogits[m], k0, k1, g2t[m])
    transpose(g2t[m][:, k0:k1], grad[m, P1:P1 + w * p].reshape((w, p))[k0:k1])


@njit(cache=True, nogil=True)
def backward_hidden(m, quadratic, dlogits, w2t, Z, H, dZ, n0, n1):
    """dZ = dŶ W2ᵀ ⊙ σ'(Z) of model m for the rows n0 ≤ n < n1 (fma.hidden_grad_dz: the product's
    sums scaled as they are stored, by Z for x² and by H > 0 for ReLU), into dZ[m]."""
    hidden_grad_dz(dlogits[m], w2t[m], n0, n1, dZ[m], Z[m] if quadratic else H[m], quadratic)


@njit(cache=True, nogil=True)
def backward_w1(m, order, starts, quadratic, dZ, grad, k0, k1):
    """∇W1 = Xᵀ dZ of model m for the columns k0 ≤ k < k1 (segment.w1_grad: grad[m, r·w + k] =
    Σ dZ[n, k] over the samples with row r, position 0 of samples 0 … N−1 then position 1, in
    registers; × 2 for x², exact). order, starts: segment.sample_order of the samples' W1 rows."""
    w1_grad(dZ[m], order, starts, quadratic, grad[m], k0, k1)


@njit(cache=True, nogil=True)
def _backward_kernel(models, order, starts, P1, quadratic, dlogits, Z, H, w2t, g2t, dZ, grad):
    """One call runs the models listed in `models` in turn; model m owns g2t[m], dZ[m] and
    grad[m]."""
    N, w, p = H.shape[1], H.shape[2], dlogits.shape[2]
    for m in models:
        backward_w2(m, P1, dlogits, H, g2t, grad, 0, p)
        backward_hidden(m, quadratic, dlogits, w2t, Z, H, dZ, 0, N)
        backward_w1(m, order, starts, quadratic, dZ, grad, 0, w)


@njit(cache=True, nogil=True)
def forward_rows(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, r0, r1):
    """forward_portable of model m for the rows r0 ≤ n < r1: Z, H and logits rows
    (Ŷ = H W2 by fma.forward_product, straight into logits)."""
    t, h = theta[m], H[m]
    p = logits.shape[2]
    first_layer_rows(t, i0, i1, quadratic, zero, Z[m], h, r0, r1)
    forward_product(h, t[P1:], p, r0, r1, logits[m])


@njit(cache=True, nogil=True)
def _forward_portable_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits):
    """As _forward_kernel, with Ŷ through fma.forward_product."""
    N, p = Z.shape[1], logits.shape[2]
    for m in models:
        w2_transpose(theta[m], P1, p, w2t[m])
        forward_rows(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, 0, N)


def forward_portable(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits) -> None:
    """forward (same signature) with Ŷ[n, j] summed over k = 0 … w−1 in order, straight into
    logits: the same bits on every CPU (numerics "portable")."""
    _forward_portable_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits)


def forward(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits) -> None:
    """Z, H, w2t and logits of the models listed in `models` (int64 indices) from θ (numpy
    arrays; module docstring); the other models' rows are left as they are. `zero` is 0 as a
    numpy scalar of the working dtype."""
    _forward_kernel(models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, logits)


def backward(models, order, starts, P1, quadratic, dlogits, Z, H, w2t, g2t, dZ, grad) -> None:
    """grad[m, :P1 + w·p] of the models m listed in `models` from dlogits and forward's Z (σ = x²),
    H, w2t (module docstring); order, starts: segment.sample_order(i0, i1, P1 // w); every other
    element of grad is left as it is (dZ holds dŶ W2ᵀ ⊙ σ'(Z) after)."""
    _backward_kernel(models, order, starts, P1, quadratic, dlogits, Z, H, w2t, g2t, dZ, grad)
