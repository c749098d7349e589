"""Sums of rows in an order written in the source: the same bits on every CPU and vector width.

    row_sums(x [R, C], out [R])    out[r] = Σ_c x[r, c]

Each row is summed in eight lanes, lane l taking c ≡ l (mod 8) from c = 0 in order, the elements
after the last whole group of eight added in order to a ninth partial sum t, then combined
((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + t. Eight independent partial sums give the
adds instruction-level parallelism without fast-math reassociation, which would let LLVM pick the
lanes by the host's vector width. No multiply is involved (products are formed before, one
rounding each), so no FMA can change a bit. Limits: CPU; float32 or float64; rows of any length.
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def _row_sums_kernel(x, zero, out):
    R, C = x.shape
    G = C - C % 8
    for r in range(R):
        row = x[r]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = t = zero
        for g in range(0, G, 8):
            v = row[g:g + 8]
            s0 += v[0]
            s1 += v[1]
            s2 += v[2]
            s3 += v[3]
            s4 += v[4]
            s5 += v[5]
            s6 += v[6]
            s7 += v[7]
        for c in range(G, C):
            t += row[c]
        out[r] = (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + t


def row_sums(x, out) -> None:
    """out[r] = Σ_c x[r, c] for a 2-D numpy array x into out [R] (the same dtype), in the fixed
    order of the module docstring (an empty row sums to 0)."""
    _row_sums_kernel(x, out.dtype.type(0), out)
