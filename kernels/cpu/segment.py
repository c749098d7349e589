"""∇W1 = Xᵀ dZ as a segmented sum held in registers.

Sample n adds dZ[n] to the rows i0[n] and i1[n] of ∇W1 [R, w] (X = e_a + e_b, or [e_a; e_b]).
The order of the adds is the torch backend's index_add_ order: for each row r, the samples with
i0[n] = r in ascending n (position 0), then those with i1[n] = r in ascending n (position 1):

    ∇W1[r, k] = ((0 + dZ[n₁, k]) + dZ[n₂, k]) + …     n₁, n₂, … = order[starts[r] : starts[r+1]]

then, for σ = x², ∇W1 ← ∇W1 + ∇W1 (σ' = 2z: dZ holds dH·Z, fma.hidden_grad_dz's epilogue, and the
2 is this exact doubling). One IEEE rounding per add, nothing fused: the same bits on every CPU
and vector width, and the bits of row adds in memory in that order. A register tile (an
@intrinsic in LLVM IR, as fma._tile) keeps up to VECTORS vectors of one row's sums (64 float32 /
32 float64 columns) in registers across the row's samples: one load of dZ per term and vector,
one store per output (a row add in memory is a load, an add and a store per term). Column tails
are masked (llvm.masked.load / store: lanes past the tail are never touched). A row with no
samples is 0.

    sample_order(i0, i1, R) -> (order [2N] int64, starts [R + 1] int64)   the rows' samples
    w1_grad(dZ [N, w], order, starts, quadratic, g [≥ R·w], k0, k1)
        g[r·w + k] = ∇W1[r, k] for every r < R and k0 ≤ k < k1
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
def _segment_tile(typingctx, src, order, l0, l1, out, o, c, n, quadratic):
    """out[o + i] = Σ over l = l0 … l1−1 in order of src[order[l], c + i], from 0, for
    i < n (1 ≤ n ≤ VECTORS·LANES), then doubled when `quadratic` (module docstring); src 2-D,
    out 1-D of the same float type, order 1-D int64."""
    if not (isinstance(src, types.Array) and src.dtype == out.dtype and src.dtype in LANES):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        dtype = tys[0].dtype
        lanes = LANES[dtype]
        vty = ir.VectorType(context.get_value_type(dtype), lanes)
        i32 = ir.IntType(32)
        mload, mstore = _masked_intrinsics(builder, vty, lanes, dtype.bitwidth)
        src_a, ord_a, out_a = (context.make_array(tys[k])(context, builder, args[k])
                               for k in (0, 1, 4))
        l0v, l1v, ov, cv, nv, quadv = args[2], args[3], args[5], args[6], args[7], args[8]
        intp = l0v.type
        align, zero = ir.Constant(i32, 1), ir.Constant(vty, [0.0] * lanes)

        def at(arr, ty, idx, vector=True):                        # &arr[idx…]
            ptr = cgutils.get_item_pointer2(
                context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape),
                cgutils.unpack_tuple(builder, arr.strides), ty.layout, idx)
            return builder.bitcast(ptr, vty.as_pointer()) if vector else ptr

        def body(masked):
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
                row = builder.load(at(ord_a, tys[1], [builder.add(l0v, loop.index)], False))
                for v in range(VECTORS):
                    col = builder.add(cv, ir.Constant(intp, v * lanes))
                    x = load(at(src_a, tys[0], [row, col]), v)
                    builder.store(builder.fadd(builder.load(acc[v]), x), acc[v])
            for v in range(VECTORS):
                a = builder.load(acc[v])
                a = builder.select(quadv, builder.fadd(a, a), a)       # x²: the 2 of σ' = 2z
                ptr = at(out_a, tys[4], [builder.add(ov, ir.Constant(intp, v * lanes))])
                if masks[v] is None:
                    builder.store(a, ptr, align=1)
                else:
                    builder.call(mstore, [a, ptr, align, masks[v]])

        full = builder.icmp_signed("==", nv, ir.Constant(nv.type, VECTORS * lanes))
        with builder.if_else(full) as (whole, tail):
            for block, masked in ((whole, False), (tail, True)):
                with block:
                    body(masked)
        return context.get_dummy_value()
    return types.none(src, order, l0, l1, out, o, c, n, quadratic), codegen


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
def w1_grad(dZ, order, starts, quadratic, g, k0, k1):
    """g[r·w + k] = ∇W1[r, k] for r < len(starts) − 1 and k0 ≤ k < k1 (module docstring)."""
    w = dZ.shape[1]
    cols = VECTORS * (8 if dZ.itemsize == 4 else 4)
    for r in range(starts.shape[0] - 1):
        for c in range(k0, k1, cols):
            _segment_tile(dZ, order, starts[r], starts[r + 1], g, r * w + c, c,
                          min(cols, k1 - c), quadratic)
