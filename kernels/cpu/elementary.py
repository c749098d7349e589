"""exp and log in float64 written in the source: the same bits on every CPU, vector width and
thread count, where libm's, numpy's and torch's exp / log are tuned per CPU and not documented to
agree.

    exp(x) = 2^k · e^r        x = k·ln2 + r, |r| ≤ ln2/2, k = round(x / ln2)
    log(x) = k·ln2 + log1p(f)  x = 2^k·(1 + f), √2/2 ≤ 1 + f < √2

Both are Sun's fdlibm algorithms (e_exp.c, e_log.c; K.C. Ng, 1993, freely distributable): a
Cody–Waite reduction with ln2 split into a high part of 32 significant bits (k·ln2_hi exact for
|k| < 2^11) and a low part, then a fixed polynomial, Remez-fitted on the reduced range —
exp: R(r²) = r − r²·(P1 + r²·(P2 + …)), e^r = 1 − ((lo − r·R/(2 − R)) − hi);
log: s = f/(2 + f), log1p(f) = 2s + s·(Lg1·s² + Lg2·s⁴ + … + Lg7·s¹⁴), as f − (½f² − s(½f² + R)).
Every operation is one IEEE +, −, ×, ÷ (no FMA: numba gives LLVM no `contract` flag and none is
written here; no fastmath), integer and bit operations on the float's bits (bitcast below), and
exact scaling by powers of two (adding k to the exponent field; 2^-1000 for subnormal results).
fdlibm bounds the error below 1 ulp; tests/kernels/test_elementary.py checks ≤ 1 ulp against
numpy's on random inputs over the whole range and the special values (±0, ±inf, NaN,
subnormals, the overflow and underflow thresholds, exp(0) = 1, log(1) = 0).

float32: `exp_array` / `log_array` on float32 arrays compute in float64 (the float32 input is
exact there) and round the float64 result once to float32: deterministic, within 1 ulp of float32
(the double rounding can differ from the correctly rounded float32 result in rare ties).

    exp(x), log(x)                    float64 scalars (@njit, callable from other numba code)
    exp_row(src, dst)                 exp over a 1-D array, vectorizable (@njit; the same bits)
    exp_array(x, out), log_array(x, out)   elementwise over arrays of one shape (float32 or
                                           float64, out the same dtype as x)
NaN results: a NaN input comes back as itself, bit for bit (fdlibm's x + x would leave its payload
to the compiler and the CPU); log of a negative number is the positive quiet NaN (a constant, not
the CPU's default NaN).
"""
from __future__ import annotations

import struct

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _word(hi: int, lo: int) -> float:
    """The float64 whose high and low 32-bit words are hi and lo (fdlibm's constants)."""
    return struct.unpack("<d", struct.pack("<Q", (hi << 32) | lo))[0]


@intrinsic
def _bits(typingctx, x):
    """The bits of a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _double(typingctx, i):
    """The float64 of an int64's bits."""
    if i != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LN2_HI = _word(0x3FE62E42, 0xFEE00000)
_LN2_LO = _word(0x3DEA39EF, 0x35793C76)
_INV_LN2 = _word(0x3FF71547, 0x652B82FE)
_O_THRESHOLD = _word(0x40862E42, 0xFEFA39EF)           # 709.78…: exp(x) overflows above
_U_THRESHOLD = _word(0xC0874910, 0xD52D3051)           # −745.13…: exp(x) underflows to 0 below
_TWO_M1000 = _word(0x01700000, 0)                      # 2^-1000
_TWO_54 = _word(0x43500000, 0)                         # 2^54
_P1 = _word(0x3FC55555, 0x5555553E)
_P2 = _word(0xBF66C16C, 0x16BEBD93)
_P3 = _word(0x3F11566A, 0xAF25DE2C)
_P4 = _word(0xBEBBBD41, 0xC5D26BF1)
_P5 = _word(0x3E663769, 0x72BEA4D0)
_LG1 = _word(0x3FE55555, 0x55555593)
_LG2 = _word(0x3FD99999, 0x9997FA04)
_LG3 = _word(0x3FD24924, 0x94229359)
_LG4 = _word(0x3FCC71C5, 0x1D8E78AF)
_LG5 = _word(0x3FC74664, 0x96CB03DE)
_LG6 = _word(0x3FC39A09, 0xD078C69F)
_LG7 = _word(0x3FC2F112, 0xDF3E5244)
_LOW = 0xFFFFFFFF
EXP_LOW, EXP_HIGH = -707.0, 709.0                      # exp_row's branch-free range


@njit(cache=True, nogil=True, error_model="numpy")
def exp(x):
    """e^x of a float64 (fdlibm's e_exp.c)."""
    b = _bits(x)
    hx = (b >> 32) & 0x7FFFFFFF                         # high word of |x|
    neg = b < 0
    if hx >= 0x40862E42:                                # |x| ≥ 709.78…, inf or NaN
        if hx >= 0x7FF00000:
            if ((hx & 0xFFFFF) | (b & _LOW)) != 0:
                return x                                # NaN: itself
            return 0.0 if neg else x                    # e^−inf = 0, e^inf = inf
        if x > _O_THRESHOLD:
            return np.inf
        if x < _U_THRESHOLD:
            return 0.0
    k, hi, lo = 0, x, 0.0
    if hx > 0x3FD62E42:                                 # |x| > ln2/2: reduce
        if hx < 0x3FF0A2B2:                             # and |x| < 1.5·ln2: k = ±1
            if neg:
                hi, lo, k = x + _LN2_HI, -_LN2_LO, -1
            else:
                hi, lo, k = x - _LN2_HI, _LN2_LO, 1
        else:
            k = int(_INV_LN2 * x + (-0.5 if neg else 0.5))    # truncated toward 0
            t = float(k)
            hi = x - t * _LN2_HI                        # exact: t·ln2_hi has ≤ 43 bits
            lo = t * _LN2_LO
        x = hi - lo
    elif hx < 0x3E300000:                               # |x| < 2^-28: e^x = 1 + x rounded
        return 1.0 + x
    t = x * x
    c = x - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    if k == 0:
        return 1.0 - ((x * c) / (c - 2.0) - x)
    y = 1.0 - ((lo - (x * c) / (2.0 - c)) - hi)
    if k >= -1021:
        return _double(_bits(y) + (k << 52))            # y·2^k, exact
    return _double(_bits(y) + ((k + 1000) << 52)) * _TWO_M1000   # subnormal: one rounding


@njit(cache=True, nogil=True, error_model="numpy")
def log(x):
    """The natural logarithm of a float64 (fdlibm's e_log.c)."""
    if x != x:
        return x                                        # a NaN (of either sign) itself
    b = _bits(x)
    hx, lx = b >> 32, b & _LOW                          # hx signed, as fdlibm's int
    k = 0
    if hx < 0x00100000:                                 # x < 2^-1022: 0, negative or subnormal
        if ((hx & 0x7FFFFFFF) | lx) == 0:
            return -np.inf                              # log(±0)
        if hx < 0:
            return np.nan                               # log(negative)
        k -= 54
        x *= _TWO_54                                    # subnormal: scale up, exact
        b = _bits(x)
        hx, lx = b >> 32, b & _LOW
    if hx >= 0x7FF00000:
        return x                                        # log(inf) = inf
    k += (hx >> 20) - 1023
    hx &= 0x000FFFFF
    i = (hx + 0x95F64) & 0x100000
    x = _double(((hx | (i ^ 0x3FF00000)) << 32) | lx)   # x or x/2 into [√2/2, √2)
    k += i >> 20
    f = x - 1.0
    dk = float(k)
    if (0x000FFFFF & (2 + hx)) < 3:                     # |f| < 2^-20
        if f == 0.0:
            return 0.0 if k == 0 else dk * _LN2_HI + dk * _LN2_LO
        R = f * f * (0.5 - 0.33333333333333333 * f)
        return f - R if k == 0 else dk * _LN2_HI - ((R - dk * _LN2_LO) - f)
    s = f / (2.0 + f)
    z = s * s
    i = hx - 0x6147A
    w = z * z
    j = 0x6B851 - hx
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    R = t2 + t1
    if (i | j) > 0:
        hfsq = 0.5 * f * f
        if k == 0:
            return f - (hfsq - s * (hfsq + R))
        return dk * _LN2_HI - ((hfsq - (s * (hfsq + R) + dk * _LN2_LO)) - f)
    if k == 0:
        return f - s * (f - R)
    return dk * _LN2_HI - ((s * (f - R) - dk * _LN2_LO) - f)


@njit(cache=True, nogil=True, error_model="numpy")
def exp_row(src, dst):
    """dst[j] = exp(src[j]) over 1-D arrays of one length (float32 or float64 each; a float32
    src is widened exactly, a float32 dst rounds once on the store; src may be dst). The same
    bits as exp element by element: where every input lies in [EXP_LOW, EXP_HIGH] (finite, no
    overflow, k ≥ −1021) fdlibm's branches become selects — the |x| < 1.5·ln2 case k = ±1 is the
    general reduction's own result there, and k = 0 (|x| ≤ ln2/2) with t = 0 gives hi = x, lo = 0
    and 1 − ((0 − x·c/(2 − c)) − x), fdlibm's k = 0 formula negated twice, exactly — so the loop
    vectorizes; otherwise exp itself on each element."""
    n = src.shape[0]
    special = False
    for j in range(n):
        x = np.float64(src[j])
        special |= not (x >= EXP_LOW and x <= EXP_HIGH)  # NaN too
    if special:
        for j in range(n):
            dst[j] = exp(np.float64(src[j]))
        return
    for j in range(n):
        x = np.float64(src[j])
        b = _bits(x)
        hx = (b >> 32) & 0x7FFFFFFF
        k = np.int32(_INV_LN2 * x + (-0.5 if x < 0.0 else 0.5))
        if hx <= 0x3FD62E42:
            k = np.int32(0)
        t = np.float64(k)
        hi = x - t * _LN2_HI
        lo = t * _LN2_LO
        r = hi - lo
        tt = r * r
        c = r - tt * (_P1 + tt * (_P2 + tt * (_P3 + tt * (_P4 + tt * _P5))))
        y = _double(_bits(1.0 - ((lo - (r * c) / (2.0 - c)) - hi)) + (np.int64(k) << 52))
        dst[j] = 1.0 + x if hx < 0x3E300000 else y


@njit(cache=True, nogil=True)
def _log_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = log(np.float64(x[i]))


def exp_array(x, out) -> None:
    """out = e^x elementwise (numpy arrays of one shape and float dtype; float32 through float64,
    rounded once)."""
    exp_row(x.reshape(-1), out.reshape(-1))


def log_array(x, out) -> None:
    """out = log x elementwise (as exp_array)."""
    _log_kernel(x.reshape(-1), out.reshape(-1))
