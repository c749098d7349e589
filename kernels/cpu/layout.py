"""Transposes in registers: W2 → W2ᵀ before a step and ∇W2ᵀ → θ's layout after ∇W2.

A transpose copies: every output element is an input element, bit for bit, whatever the order,
the vector width or the CPU. Speed comes from moving whole vectors: a tile of L × L elements
(L = 8 for float32, 4 for float64: one vector per row) is loaded as L row vectors of a, turned
in registers by log2(L) stages of two-input shuffles (LLVM shufflevector with constant masks:
unpack pairs, then pairs of pairs, then halves: vunpck / vshufps / vperm2f128 on AVX, the same
lanes moved on any target) and stored as L row vectors of out. A ragged edge of the tile (rows or
columns past the end) loads and stores only what exists (llvm.masked.load for a partial row of a,
element stores for a partial row of out, a skipped row for a missing one). Writing along rows of
the output one element at a time (grad.py's former loop) cost about one cycle an element.

    transpose(a [R, C], out [C, R])     out[c, r] = a[r, c]   (a and out: unit stride along
                                                                their last axis, checked)
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import KernelError
from .fma import LANES, _lane_masks, _masked_intrinsics


def _stages(builder, rows, lanes):
    """The L × L transpose of the row vectors `rows` (L = lanes = 8 or 4) by shufflevector."""
    def shuf(x, y, mask):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                                        mask))
    if lanes == 4:                                      # 4 × 4: pairs, then halves
        lo, hi = [0, 4, 2, 6], [1, 5, 3, 7]
        t = [shuf(rows[0], rows[1], lo), shuf(rows[0], rows[1], hi),
             shuf(rows[2], rows[3], lo), shuf(rows[2], rows[3], hi)]
        first, second = [0, 1, 4, 5], [2, 3, 6, 7]
        return [shuf(t[0], t[2], first), shuf(t[1], t[3], first),
                shuf(t[0], t[2], second), shuf(t[1], t[3], second)]
    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = []
    for i in range(0, 8, 2):                            # t[2i'] = unpacklo, t[2i'+1] = unpackhi
        t += [shuf(rows[i], rows[i + 1], lo), shuf(rows[i], rows[i + 1], hi)]
    pair_lo, pair_hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = []
    for base in (0, 4):                                 # rows 0–3, then 4–7
        t0, t1, t2, t3 = t[base:base + 4]
        u += [shuf(t0, t2, pair_lo), shuf(t0, t2, pair_hi),
              shuf(t1, t3, pair_lo), shuf(t1, t3, pair_hi)]
    half_lo, half_hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return ([shuf(u[j], u[4 + j], half_lo) for j in range(4)]     # columns 0–3
            + [shuf(u[j], u[4 + j], half_hi) for j in range(4)])  # columns 4–7


@intrinsic
def _transpose_tile(typingctx, a, out, r, c, nr, nc):
    """out[c + l, r + i] = a[r + i, c + l] for i < nr, l < nc (1 … L each): one L × L tile."""
    if not (isinstance(a, types.Array) and a.dtype == out.dtype and a.dtype in LANES):
        return None

    def codegen(context, builder, signature, args):
        dtype = signature.args[0].dtype
        lanes = LANES[dtype]
        vty = ir.VectorType(context.get_value_type(dtype), lanes)
        i32 = ir.IntType(32)
        mload, _ = _masked_intrinsics(builder, vty, lanes, dtype.bitwidth)
        arrs = [(context.make_array(ty)(context, builder, v), ty)
                for ty, v in zip(signature.args[:2], args[:2])]
        rv, cv, nrv, ncv = args[2:]
        intp = rv.type
        align, zero = ir.Constant(i32, 1), ir.Constant(vty, [0.0] * lanes)

        def at(k, i, j):
            arr, ty = arrs[k]
            ptr = cgutils.get_item_pointer2(
                context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape),
                cgutils.unpack_tuple(builder, arr.strides), ty.layout, [i, j])
            return builder.bitcast(ptr, vty.as_pointer())

        def body(load_masked, store_masked):
            lmask = _lane_masks(builder, ncv, lanes, 1)[0] if load_masked else None  # l < nc
            rows = []
            for i in range(lanes):                       # row i of the tile, or 0 past nr
                slot = cgutils.alloca_once_value(builder, zero)
                with builder.if_then(builder.icmp_signed("<", ir.Constant(intp, i), nrv)):
                    ptr = at(0, builder.add(rv, ir.Constant(intp, i)), cv)
                    x = (builder.load(ptr, align=1) if lmask is None
                         else builder.call(mload, [ptr, align, lmask, zero]))
                    builder.store(x, slot)
                rows.append(builder.load(slot))
            for l, col in enumerate(_stages(builder, rows, lanes)):   # column l of a
                with builder.if_then(builder.icmp_signed("<", ir.Constant(intp, l), ncv)):
                    ptr = at(1, builder.add(cv, ir.Constant(intp, l)), rv)
                    if not store_masked:
                        builder.store(col, ptr, align=1)
                        continue
                    base = builder.bitcast(ptr, vty.element.as_pointer())
                    for i in range(lanes):                # lane by lane (a masked vector
                        with builder.if_then(builder.icmp_signed(   # store is slow on AMD)
                                "<", ir.Constant(intp, i), nrv)):
                            builder.store(builder.extract_element(col, ir.Constant(i32, i)),
                                          builder.gep(base, [ir.Constant(intp, i)]))

        full = ir.Constant(ncv.type, lanes)
        with builder.if_else(builder.icmp_signed("==", ncv, full)) as (cols_full, cols_part):
            for block, load_masked in ((cols_full, False), (cols_part, True)):
                with block:
                    with builder.if_else(builder.icmp_signed("==", nrv, full)) as (whole, part):
                        with whole:
                            body(load_masked, False)
                        with part:
                            body(load_masked, True)
        return context.get_dummy_value()
    return types.none(a, out, r, c, nr, nc), codegen


@njit(cache=True, nogil=True)
def transpose(a, out):
    """out = aᵀ for a [R, C] into out [C, R] (copies), one L × L register tile at a time."""
    if (a.size and a.strides[1] != a.itemsize) or (out.size and out.strides[1] != out.itemsize):
        raise KernelError("layout.transpose: a and out need unit stride along their last axis")
    R, C = a.shape
    L = 8 if a.itemsize == 4 else 4
    for r in range(0, R, L):
        for c in range(0, C, L):
            _transpose_tile(a, out, r, c, min(L, R - r), min(L, C - c))
