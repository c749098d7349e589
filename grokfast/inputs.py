"""Validation of the inputs that are not Config fields (seed lists: train, sweep, CLI), and the one
rule for numbers of any numeric type (numpy scalars included)."""
from __future__ import annotations

import numbers

from .errors import GrokfastError

MAX_SEED = 2 ** 63 - 1


def plain_number(v):
    """A number of another numeric type (a numpy scalar) as the Python int or float it holds, so
    that it is checked as that number is (np.int64(64) → 64, np.float32(0.5) → 0.5,
    np.float64(64.0) → 64.0); anything else unchanged."""
    if type(v) in (int, float, bool) or isinstance(v, bool) or not isinstance(v, numbers.Real):
        return v
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def check_seeds(seeds) -> list[int]:
    """A list of distinct integer seeds in [0, 2**63) from an iterable; GrokfastError otherwise
    (a string, a bare number, 1.7, True, a repeated seed)."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise GrokfastError(f"seeds={seeds!r}: give a list of integers, e.g. seeds=range(8) or "
                            f"seeds=[0, 1, 2] (for one model, leave seeds out and set "
                            f"config.seed)")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            if not isinstance(s, bool) and isinstance(s, numbers.Real) and float(s).is_integer():
                s = int(s)
            else:
                raise GrokfastError(f"seeds: {s!r} is not an integer; give whole numbers, e.g. "
                                    f"seeds=range(8)")
        if not 0 <= int(s) <= MAX_SEED:
            raise GrokfastError(f"seeds: {s} is outside [0, 2**63): choose seeds in that range")
        out.append(int(s))
    if not out:
        raise GrokfastError("seeds is empty: give at least one seed, e.g. seeds=range(4)")
    if len(set(out)) != len(out):
        dup = next(s for s in out if out.count(s) > 1)
        raise GrokfastError(f"seeds lists {dup} twice: give distinct seeds (a repeated seed "
                            f"trains the same model twice)")
    return out
