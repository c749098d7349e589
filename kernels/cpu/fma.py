"""Fixed-order FMA micro-kernels for the three products of a step and the forward's Ŷ.

`fma(a, b, c)` is a·b + c with one rounding (LLVM's llvm.fma through numba.extending.intrinsic):
the FMA instruction where the target has one (vfmadd on x86-64 with FMA3, fmla on ARM), glibc's
correctly rounded fma / fmaf where it has none. Either way one IEEE operation: the same bits on
every CPU. No fastmath flag anywhere (not even 'contract', which fuses on some targets only).

Every output is one chain of FMAs from 0 in the order written below, nothing reassociated:

    Ŷ[n, j]               = Σ_k H[n, k] W2[k, j]     s ← fma(H[n, k], W2[k, j], s), k = 0 … w−1
    g2t[j, k] = ∇W2[k, j] = Σ_n dŶ[n, j] H[n, k]    s ← fma(dŶ[n, j], H[n, k], s), n = 0 … N−1
    dH[n, k]              = Σ_j dŶ[n, j] W2[k, j]    s ← fma(dŶ[n, j], W2ᵀ[j, k], s), j = 0 … p−1

(s = 0 before the first term.) All three are one function, product: out[r, c] continues
fma(a[t, r], b[t, c], ·) over t in order (a = Hᵀ, a view of H, b = W2; a = dŶ, b = H;
a = dŶᵀ, b = W2ᵀ). Speed comes from what never reorders a sum, the BLIS layout: a register tile
of up to 6 output rows × COLS contiguous columns (16 for float32, 8 for float64: two vectors of
8 / 4 lanes per row) keeps its ≤ 12 accumulators in vector registers for a whole block of KC
terms, each term one vector load of b[t, c : c+COLS], one broadcast of a[t, r+i] per row and one
vector FMA (llvm.fma.v8f32 / v4f64) per accumulator. The tile is written in LLVM IR (an
@intrinsic), so the accumulators stay in registers (numba's loop vectorizer would keep them in
memory: a load and a store per FMA, and it does not vectorize across rows). A row tail (R not a
multiple of 6: p = 11 is 6 + 5) is one tile of the rows left, a column tail (< COLS: Ŷ's p
columns) one tile whose last vector is masked (llvm.masked.load / store: lanes past the tail are
never read or written, and a lane's chain never sees another lane). The cache blocks (KC terms ×
NC columns of b) only pause each chain, which the next block resumes from out exactly. Vector
types of a fixed lane count are legalized per target (two xmm halves on SSE2, each lane a call to
fmaf / fma without FMA3, masked lanes as scalar loads and stores), so the blocking, the tile
shape, the vector width, the thread that runs a range and the split into ranges never change a
bit. forward_product, w2_grad and hidden_grad start their chains from 0 in registers (no zeroing
pass over the output, no load of it). hidden_grad_dz adds an epilogue to dH's tiles: as each
finished sum s is stored, dZ = s·Z (σ = x²: one more rounding; the 2 of σ' is ∇W1's exact final
doubling) or s where H > 0 and 0 elsewhere (ReLU: H > 0 exactly where Z > 0; NaN: 0), the bits
of a separate σ' pass over dH without the pass (no FMA: the multiply has no add to fuse with).

Composable: every function here is @njit (nogil) and callable from other numba code. Signatures
(arrays C-contiguous in their last axis; float32 or float64, one type per call):
    fma(a, b, c) -> a·b + c                                         scalars of one float type
    forward_product(H [N, w], w2 [≥ w·p], p, n0, n1, Y [N, p])     Y[n0:n1] (W2[k, j] = w2[k·p + j])
    w2_grad(H [N, w], dY [N, p], j0, j1, g2t [p, w])                g2t[j0:j1]
    w2_grad_units(H, dY, k0, k1, g2t)                               g2t[:, k0:k1]
    hidden_grad(dY [N, p], w2t [p, w], n0, n1, dH [N, w])           dH[n0:n1]
    hidden_grad_dz(dY, w2t, n0, n1, dZ [N, w], S [N, w], quadratic) dZ[n0:n1] (S: Z for x², H
                                                                    for ReLU)
    product(a [T, R], b [T, C], out [R, C], r0, r1, c0, c1)        out[r0:r1, c0:c1] (a: any
                                                                    strides; b, out: unit stride
                                                                    in their last axis, checked)
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import KernelError

LANES = {types.float32: 8, types.float64: 4}  # lanes of a vector of the tile (fixed, any CPU)
VECTORS = 2                                   # vectors per output row of a tile: COLS = 16 / 8
ROWS = 6                                      # output rows of a tile (fewer at a row tail)
KC, NC = 128, 128                             # cache blocks of product: t (terms) and columns
NC_W2 = 16                                    # w2_grad's column block at width ≥ 4·NC (w2_grad)


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c rounded once (llvm.fma), for three scalars of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)                                  # llvmlite: llvm.fma
    return a(a, b, c), codegen


def _lane_masks(builder, n, lanes, count):
    """The masks of `count` consecutive vectors of `lanes` lanes over n columns: vector v's lane l
    is on where v·lanes + l < n (n an integer value; one compare per vector)."""
    i32 = ir.IntType(32)
    ity = ir.VectorType(i32, lanes)
    nl = builder.trunc(n, i32) if n.type.width > 32 else n
    vn = builder.shuffle_vector(builder.insert_element(ir.Constant(ity, ir.Undefined), nl,
                                                       ir.Constant(i32, 0)),
                                ir.Constant(ity, ir.Undefined), ir.Constant(ity, [0] * lanes))
    return [builder.icmp_signed("<", ir.Constant(ity, [v * lanes + l for l in range(lanes)]), vn)
            for v in range(count)]


def _masked_intrinsics(builder, vty, lanes, bits):
    """llvm.masked.load / llvm.masked.store for vectors of type vty (opaque pointer p0)."""
    mty = ir.VectorType(ir.IntType(1), lanes)
    pty, i32 = vty.as_pointer(), ir.IntType(32)
    load = cgutils.get_or_insert_function(builder.module,
                                          ir.FunctionType(vty, [pty, i32, mty, vty]),
                                          f"llvm.masked.load.v{lanes}f{bits}.p0")
    store = cgutils.get_or_insert_function(builder.module,
                                           ir.FunctionType(ir.VoidType(), [vty, pty, i32, mty]),
                                           f"llvm.masked.store.v{lanes}f{bits}.p0")
    return load, store


@intrinsic
def _tile(typingctx, a, b, out, t0, t1, r, c, rows, n, fresh, sig, last, quad):
    """The register tile of `product`: continues, for i < rows (1 … ROWS) and the n columns
    c … c+n−1 (1 ≤ n ≤ COLS), out[r+i, c+·] ← fma(b[t, c+·], a[t, r+i], out[r+i, c+·]) for
    t = t0 … t1−1 in order, one vector FMA per row, vector and t (a, b, out: 2-D arrays of one
    float type; a any strides, b and out rows loaded and stored as vectors). `fresh` (bool):
    the chains start from 0 instead of out (out is not read). One body per row count, each in
    three column variants: n = COLS (plain vector loads and stores), n > LANES (the second
    vector masked) and n ≤ LANES (one masked vector): llvm.masked.load / store touch only the
    n columns, whatever the target (legalized to scalar code without AVX). `sig` (an array like
    out, or None: no epilogue compiled) with `last` (bool: these terms end the chains) stores
    σ'-scaled sums instead (the epilogue, module docstring): sig[i, j]·s with `quad`, else s
    where sig[i, j] > 0 and 0 elsewhere (NaN: 0)."""
    if not (isinstance(a, types.Array) and a.dtype == b.dtype == out.dtype
            and a.dtype in LANES):
        return None
    epilogue = isinstance(sig, types.Array)
    if epilogue and sig.dtype != a.dtype:
        return None

    def codegen(context, builder, signature, args):
        dtype = signature.args[0].dtype
        lanes = LANES[dtype]
        vty = ir.VectorType(context.get_value_type(dtype), lanes)
        vfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                              f"llvm.fma.v{lanes}f{dtype.bitwidth}")
        mload, mstore = _masked_intrinsics(builder, vty, lanes, dtype.bitwidth)
        arrays = [(context.make_array(ty)(context, builder, v), ty)
                  for ty, v in zip(signature.args[:3], args[:3])]
        t0v, t1v, rv, cv, rowsv, nv, freshv = args[3:10]
        lastv, quadv = args[11:]
        if epilogue:
            arrays.append((context.make_array(signature.args[10])(context, builder, args[10]),
                           signature.args[10]))
        intp = rv.type
        i32 = ir.IntType(32)
        align = ir.Constant(i32, 1)
        undef, lane0 = ir.Constant(vty, ir.Undefined), ir.Constant(i32, 0)
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        zero = ir.Constant(vty, [0.0] * lanes)

        def at(k, i, j, vector):                                  # &array_k[i, j]
            arr, ty = arrays[k]
            ptr = cgutils.get_item_pointer2(
                context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape),
                cgutils.unpack_tuple(builder, arr.strides), ty.layout, [i, j])
            return builder.bitcast(ptr, vty.as_pointer()) if vector else ptr

        def plus(x, k):
            return builder.add(x, ir.Constant(intp, k))

        def body(rows, nvec, masked):
            masks = [None] * nvec                                  # lanes v·LANES + l < n
            if masked:
                masks[-1] = _lane_masks(builder, nv, lanes, nvec)[-1]

            def load(ptr, v):
                if masks[v] is None:
                    return builder.load(ptr, align=1)
                return builder.call(mload, [ptr, align, masks[v], zero])

            def store(x, ptr, v):
                if masks[v] is None:
                    builder.store(x, ptr, align=1)
                else:
                    builder.call(mstore, [x, ptr, align, masks[v]])
            outs = [[at(2, plus(rv, i), plus(cv, v * lanes), True) for v in range(nvec)]
                    for i in range(rows)]                          # [rows, nvec] of out
            acc = [[cgutils.alloca_once(builder, vty) for _ in range(nvec)] for _ in range(rows)]
            with builder.if_else(freshv) as (start, resume):       # the chains so far, in registers
                with start:
                    for i in range(rows):
                        for v in range(nvec):
                            builder.store(zero, acc[i][v])
                with resume:
                    for i in range(rows):
                        for v in range(nvec):
                            builder.store(load(outs[i][v], v), acc[i][v])
            with cgutils.for_range(builder, builder.sub(t1v, t0v)) as loop:
                t = builder.add(t0v, loop.index)
                xs = [load(at(1, t, plus(cv, v * lanes), True), v)
                      for v in range(nvec)]                        # b[t, c : c+n]
                for i in range(rows):
                    s = builder.insert_element(undef, builder.load(at(0, t, plus(rv, i), False)),
                                               lane0)
                    s = builder.shuffle_vector(s, undef, splat)    # a[t, r+i] in every lane
                    for v in range(nvec):
                        builder.store(builder.call(vfma, [xs[v], s, builder.load(acc[i][v])]),
                                      acc[i][v])
            def finish(scale):                                     # the sums, into out
                for i in range(rows):
                    for v in range(nvec):
                        x = builder.load(acc[i][v])
                        if scale is not None:
                            x = scale(x, load(at(3, plus(rv, i), plus(cv, v * lanes), True), v))
                        store(x, outs[i][v], v)
            if not epilogue:
                finish(None)
                return
            with builder.if_else(lastv) as (ends, goes_on):
                with goes_on:
                    finish(None)
                with ends:
                    with builder.if_else(quadv) as (square, relu):
                        with square:                               # dH·Z, one rounding
                            finish(builder.fmul)
                        with relu:                                 # dH where H > 0, else 0
                            finish(lambda x, s: builder.select(builder.fcmp_ordered(">", s, zero),
                                                               x, zero))

        cols = VECTORS * lanes
        for rows in range(1, ROWS + 1):
            with builder.if_then(builder.icmp_signed("==", rowsv, ir.Constant(rowsv.type, rows))):
                full = builder.icmp_signed("==", nv, ir.Constant(nv.type, cols))
                with builder.if_else(full) as (then, otherwise):
                    with then:
                        body(rows, VECTORS, False)
                    with otherwise:
                        wide = builder.icmp_signed(">", nv, ir.Constant(nv.type, lanes))
                        with builder.if_else(wide) as (two, one):
                            with two:
                                body(rows, VECTORS, True)
                            with one:
                                body(rows, 1, True)
        return context.get_dummy_value()
    return types.none(a, b, out, t0, t1, r, c, rows, n, fresh, sig, last, quad), codegen


@njit(cache=True, nogil=True)
def _product(a, b, out, r0, r1, c0, c1, fresh, sig, quad, nc=NC):
    """product; with `fresh` the chains start from 0 (out is not read); with an array `sig`
    (like out; None: none) the epilogue scales each finished sum by σ' (_tile); `nc`: the
    column block (a multiple of COLS; it orders the tiles, never a chain's terms)."""
    if b.size and b.strides[1] != b.itemsize or out.size and out.strides[1] != out.itemsize:
        raise KernelError("fma.product: b and out need unit stride along their last axis")
    T = a.shape[0]
    cols = VECTORS * (8 if a.itemsize == 4 else 4)                 # COLS of the tile (_tile)
    for t0 in range(0, max(T, 1), KC):                             # a [KC, ·] block of t (T = 0:
        t1 = min(t0 + KC, T)                                       # one empty block)
        for n0 in range(c0, c1, nc):                               # b [KC, nc] stays in cache
            n1 = min(n0 + nc, c1)
            for r in range(r0, r1, ROWS):
                rows = min(ROWS, r1 - r)
                for c in range(n0, n1, cols):
                    _tile(a, b, out, t0, t1, r, c, rows, min(cols, n1 - c), fresh and t0 == 0,
                          sig, t1 == T, quad)


@njit(cache=True, nogil=True)
def product(a, b, out, r0, r1, c0, c1):
    """Continue out[r, c] ← fma(a[t, r], b[t, c], out[r, c]) for t = 0 … T−1 in order
    (a [T, R] any strides; b [T, C] and out [R, C] with unit stride along c: the tiles load and
    store b[t, c : c+COLS] and out[r, c : c+COLS] as vectors), for r0 ≤ r < r1 and c0 ≤ c < c1:
    with out zeroed first, out = aᵀ b, each output one FMA chain from 0 in written order."""
    _product(a, b, out, r0, r1, c0, c1, False, None, False)


@njit(cache=True, nogil=True)
def forward_product(H, w2, p, n0, n1, Y):
    """Y[n, j] = Σ_k H[n, k] w2[k·p + j] (k in order, one FMA each) for n0 ≤ n < n1 and every
    j < p (H [N, w], Y [N, p] with unit stride along j: Ŷ straight into the logits)."""
    w = H.shape[1]
    _product(H.T, w2[:w * p].reshape((w, p)), Y, n0, n1, 0, p, True, None, False)


@njit(cache=True, nogil=True, inline="always")
def _nc_w2(w):
    """w2_grad's column block at width w: one register tile (NC_W2) from 4·NC on, else NC."""
    return NC_W2 if w >= 4 * NC else NC


@njit(cache=True, nogil=True)
def w2_grad(H, dY, j0, j1, g2t):
    """g2t[j, k] = Σ_n dY[n, j] H[n, k] (n in order, one FMA each) for j0 ≤ j < j1, every k.
    From width 4·NC (512) on, column blocks of one tile (NC_W2): each 16 columns of H's KC rows
    serve all of g2t's row tiles before the next. Measured on the Zen 4 (bench/RESULTS.md, one
    thread, same bits): 1.09–1.19× NC = 128 at widths 512 and 1024, 2–4 % slower at 128–384."""
    _product(dY, H, g2t, j0, j1, 0, H.shape[1], True, None, False, _nc_w2(H.shape[1]))


@njit(cache=True, nogil=True)
def w2_grad_units(H, dY, k0, k1, g2t):
    """w2_grad for every j and the hidden units k0 ≤ k < k1 only (g2t[:, k0:k1]; the same
    chains, the same column blocks)."""
    _product(dY, H, g2t, 0, dY.shape[1], k0, k1, True, None, False, _nc_w2(H.shape[1]))


@njit(cache=True, nogil=True)
def hidden_grad(dY, w2t, n0, n1, dH):
    """dH[n, k] = Σ_j dY[n, j] w2t[j, k] (j in order, one FMA each) for n0 ≤ n < n1, every k."""
    _product(dY.T, w2t, dH, n0, n1, 0, w2t.shape[1], True, None, False)


@njit(cache=True, nogil=True)
def hidden_grad_dz(dY, w2t, n0, n1, dZ, S, quadratic):
    """dZ[n, k] = σ'-scaled Σ_j dY[n, j] w2t[j, k] (j in order, one FMA each, then the epilogue)
    for n0 ≤ n < n1, every k: the sum·S[n, k] for σ = x² (S = Z; the 2 of σ' is ∇W1's final
    doubling), else the sum where S[n, k] > 0 and 0 elsewhere (ReLU, S = H: H > 0 exactly
    where Z > 0; NaN: 0)."""
    _product(dY.T, w2t, dZ, n0, n1, 0, w2t.shape[1], True, S, quadratic)
