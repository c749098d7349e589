"""∇W1 = Xᵀ dZ as a segmented sum held in registers, with σ'(Z) applied as each term is read.

Sample n adds dZ[n] to the rows i0[n] and i1[n] of ∇W1 [R, w] (X = e_a + e_b, or [e_a; e_b]).
The order of the adds is the torch backend's index_add_ order: for each row r, the samples with
i0[n] = r in ascending n (position 0), then those with i1[n] = r in ascending n (position 1):

    ∇W1[r, k] = ((0 + dZ[n₁, k]) + dZ[n₂, k]) + …     n₁, n₂, … = order[starts[r] : starts[r+1]]
    dZ[n, k]  = dH[n, k] if H[n, k] > 0 else 0         ReLU (H > 0 exactly where Z > 0; NaN: 0)
              = dH[n, k]·Z[n, k]                       σ = x² (σ' = 2z: the 2 is the final
                                                       ∇W1 ← ∇W1 + ∇W1, exact)

one IEEE rounding per operation, nothing fused (no fastmath, no FMA): the same bits on every CPU
and vector width, and the bits of an in-place dZ pass followed by row adds in that order. A
register tile (an @intrinsic in LLVM IR, as fma._tile) keeps up to VECTORS vectors of one row's
sums (64 float32 / 32 float64 columns) in registers across the row's samples: one load of dH and
one of the σ' source per term and vector, one store per output (a row add in memory is a load, an
add and a store per term). Column tails are masked (llvm.masked.load / store: lanes past the tail
are never touched). A row with no samples is 0.

    sample_order(i0, i1, R) -> (order [2N] int64, starts [R + 1] int64)   the rows' samples
    w1_grad(dH [N, w], S [N, w], order, starts, quadratic, g [≥ R·w], k0, k1)
        g[r·w + k] = ∇W1[r, k] for every r < R and k0 ≤ k < k1 (S: H for ReLU, Z for x²)
Every output is computed whole by one call, so callers may cut k over threads (bits unchanged).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .fma import LANES, _lane_masks, _masked_intrinsics

VECTORS = 8                                   # vectors of sums a tile keeps: 64 / 32 columns


@intrinsic
def _segment_tile(typingctx, src, sig, order, l0, l1, out, o, c, n, quadratic):
    """out[o + i] = Σ over l = l0 … l1−1 in order of σ'-masked src[order[l], c + i], from 0, for
    i < n (1 ≤ n ≤ VECTORS·LANES), then doubled when `quadratic` (module docstring); src and sig
    2-D of one float type, out 1-D of the same, order 1-D int64."""
    if not (isinstance(src, types.Array) and src.dtype == sig.dtype == out.dtype
            and src.dtype in LANES):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        dtype = tys[0].dtype
        lanes = LANES[dtype]
        vty = ir.VectorType(context.get_value_type(dtype), lanes)
        i32 = ir.IntType(32)
        mload, mstore = _masked_intrinsics(builder, vty, lanes, dtype.bitwidth)
        src_a, sig_a, ord_a, out_a = (context.make_array(tys[k])(context, builder, args[k])
                                      for k in (0, 1, 2, 5))
        l0v, l1v, ov, cv, nv, quadv = args[3], args[4], args[6], args[7], args[8], args[9]
        intp = l0v.type
        align, zero = ir.Constant(i32, 1), ir.Constant(vty, [0.0] * lanes)

        def at(arr, ty, idx, vector=True):                        # &arr[idx…]
            ptr = cgutils.get_item_pointer2(
                context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape),
                cgutils.unpack_tuple(builder, arr.strides), ty.layout, idx)
            return builder.bitcast(ptr, vty.as_pointer()) if vector else ptr

        def body(masked, quad):
            masks = (_lane_masks(builder, nv, lanes, VECTORS) if masked   # v·LANES + l < n
                     else [None] * VECTORS)

            def load(ptr, v):
                if masks[v] is None:
                    return builder.load(ptr, align=1)
                return builder.call(mload, [ptr, align, masks[v], zero])
            acc = [cgutils.alloca_once(builder, vty) for _ in range(VECTORS)]
            for a in acc:
                builder.store(zero, a)
            with cgutils.for_range(builder, builder.sub(l1v, l0v)) as loop:
                row = builder.load(at(ord_a, tys[2], [builder.add(l0v, loop.index)], False))
                for v in range(VECTORS):
                    col = builder.add(cv, ir.Constant(intp, v * lanes))
                    d = load(at(src_a, tys[0], [row, col]), v)
                    s = load(at(sig_a, tys[1], [row, col]), v)
                    x = (builder.fmul(d, s) if quad else
                         builder.select(builder.fcmp_ordered(">", s, zero), d, zero))
                    builder.store(builder.fadd(builder.load(acc[v]), x), acc[v])
            for v in range(VECTORS):
                a = builder.load(acc[v])
                if quad:
                    a = builder.fadd(a, a)
                ptr = at(out_a, tys[5], [builder.add(ov, ir.Constant(intp, v * lanes))])
                if masks[v] is None:
                    builder.store(a, ptr, align=1)
                else:
                    builder.call(mstore, [a, ptr, align, masks[v]])

        full = builder.icmp_signed("==", nv, ir.Constant(nv.type, VECTORS * lanes))
        with builder.if_else(full) as (whole, tail):
            for block, masked in ((whole, False), (tail, True)):
                with block:
                    with builder.if_else(quadv) as (square, relu):
                        with square:
                            body(masked, True)
                        with relu:
                            body(masked, False)
        return context.get_dummy_value()
    return types.none(src, sig, order, l0, l1, out, o, c, n, quadratic), codegen


@njit(cache=True, nogil=True)
def sample_order(i0, i1, R):
    """The samples of each of the R rows of ∇W1 in the order they add (module docstring):
    order[starts[r] : starts[r+1]] for row r (a counting sort, stable)."""
    N = i0.shape[0]
    starts = np.zeros(R + 1, np.int64)
    for n in range(N):
        starts[i0[n] + 1] += 1
    for n in range(N):
        starts[i1[n] + 1] += 1
    for r in range(R):
        starts[r + 1] += starts[r]
    fill = starts[:R].copy()
    order = np.empty(2 * N, np.int64)
    for n in range(N):                                             # position 0, then 1
        order[fill[i0[n]]] = n
        fill[i0[n]] += 1
    for n in range(N):
        order[fill[i1[n]]] = n
        fill[i1[n]] += 1
    return order, starts


@njit(cache=True, nogil=True)
def w1_grad(dH, S, order, starts, quadratic, g, k0, k1):
    """g[r·w + k] = ∇W1[r, k] for r < len(starts) − 1 and k0 ≤ k < k1 (module docstring)."""
    w = dH.shape[1]
    cols = VECTORS * (8 if dH.itemsize == 4 else 4)
    for r in range(starts.shape[0] - 1):
        for c in range(k0, k1, cols):
            _segment_tile(dH, S, order, starts[r], starts[r + 1], g, r * w + c, c,
                          min(cols, k1 - c), quadratic)
