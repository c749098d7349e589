"""A model of the fused multiply–add from exact rationals: the written FMA chains of
kernels/cpu/fma.py, checked bitwise by the kernel and numerics tests."""
from fractions import Fraction

import numpy as np


def fma_exact(a, b, c, dt):
    """a·b + c rounded once to dt (nearest, ties to even), from the exact rational value."""
    x = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    r = dt(float(x))                                  # within one ulp of the nearest
    best = None
    for cand in (np.nextafter(r, dt(-np.inf)), r, np.nextafter(r, dt(np.inf))):
        err = abs(Fraction(float(cand)) - x)
        even = int(np.asarray(cand).view(np.int32 if dt == np.float32 else np.int64)) % 2 == 0
        key = (err, not even)
        if best is None or key < best[0]:
            best = (key, cand)
    return dt(best[1])


def chain(pairs, dt, start=0):
    """s ← fma(a, b, s) over pairs in order, from s = start."""
    s = dt(start)
    for a, b in pairs:
        s = fma_exact(a, b, s, dt)
    return s
