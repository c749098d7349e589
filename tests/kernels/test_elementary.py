"""kernels/cpu/elementary.py: the written float64 exp and log within 1 ulp of numpy's on 10⁶ random
inputs over their whole range each, the special values exactly (±0, ±inf, NaN, subnormals, the
overflow and underflow thresholds, exp(0) = 1, log(1) = 0), float32 as the float64 result rounded
once, and compiled code with no FMA, no fast-math flag and no call to a library exp / log."""

import numpy as np
import pytest
from compiled import compiled
from numba import njit

from grokfast.kernels.cpu import elementary as el

N = 1_000_000
O_THRESHOLD = 709.782712893383973096                # largest x with a finite e^x
U_THRESHOLD = -745.133219101941108420               # smallest x with e^x > 0


def ulps(a, b):
    """|a − b| in units in the last place, counted along the ordered float64 (or float32) line;
    NaN against NaN is 0."""
    it = np.int64 if a.dtype == np.float64 else np.int32
    ia, ib = a.view(it).astype(np.int64), b.view(it).astype(np.int64)
    lowest = np.int64(np.iinfo(it).min)
    ia = np.where(ia < 0, lowest - ia, ia)
    ib = np.where(ib < 0, lowest - ib, ib)
    d = np.abs(ia - ib)
    d[np.isnan(a) & np.isnan(b)] = 0
    return d


def run(f, x):
    out = np.full_like(x, np.nan)
    f(x, out)
    return out


def check_ulp(f, ref, x, name):
    got = run(f, x)
    with np.errstate(all="ignore"):
        want = ref(x)
    d = ulps(got, want)
    worst = int(np.argmax(d))
    assert d.max() <= 1, (f"{name}: {int((d > 1).sum())} of {x.size} beyond 1 ulp; worst at "
                          f"x={x[worst]!r}: {got[worst]!r} against numpy's {want[worst]!r}")
    return d


def test_exp_within_one_ulp_of_numpy_over_the_whole_range():
    rng = np.random.default_rng(0)
    wide = rng.uniform(U_THRESHOLD - 1, O_THRESHOLD + 1, N)          # overflow and underflow too
    small = rng.standard_normal(N) * 10.0 ** rng.integers(-20, 3, N)  # |x| from 1e-20 to ~1e3
    reduced = rng.uniform(-2.0, 2.0, N)                               # the k = 0, ±1, ±2 branches
    subnormal = rng.uniform(-745.2, -708.3, N)                        # results below 2^-1022
    for name, x in [("wide", wide), ("small", small), ("reduced", reduced),
                    ("subnormal results", subnormal)]:
        d = check_ulp(el.exp_array, np.exp, x, name)
        assert (d == 0).mean() > 0.8, name                            # mostly the same bits


@njit
def _exp_each(x, out):
    for i in range(x.shape[0]):
        out[i] = el.exp(np.float64(x[i]))


@pytest.mark.parametrize("dt", [np.float64, np.float32], ids=["float64", "float32"])
def test_exp_row_is_exp_element_by_element_bitwise(dt):
    """exp_row's branch-free loop (every input in [EXP_LOW, EXP_HIGH]) and its fallback (one
    input outside) against the scalar exp on each element, in place too."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(el.EXP_LOW, el.EXP_HIGH, N // 2),
                        rng.uniform(-1.1, 1.1, N // 4),                # k = 0, ±1 and their edges
                        rng.standard_normal(N // 4) * 10.0 ** rng.integers(-30, 0, N // 4),
                        [0.0, -0.0, el.EXP_LOW, el.EXP_HIGH, 0.34657359027997264,
                         np.nextafter(0.34657359027997264, 1), 1.0397205352783203,
                         -1.0397205352783203, 2.0 ** -28, -(2.0 ** -28), 3.7e-9]]).astype(dt)
    want = np.full_like(x, np.nan)
    _exp_each(x, want)
    for case in (x, np.concatenate([x, np.array([np.nan, -800.0], dt)])):
        got = np.full_like(case, np.nan)
        el.exp_row(case, got)
        assert got[:x.size].tobytes() == want.tobytes()
        el.exp_row(case, case)
        assert case[:x.size].tobytes() == want.tobytes()


def test_log_within_one_ulp_of_numpy_over_the_whole_range():
    rng = np.random.default_rng(1)
    bits = rng.integers(1, 0x7FF0000000000000, N, dtype=np.int64).view(np.float64)  # every binade
    near_one = 1.0 + rng.standard_normal(N) * 10.0 ** rng.integers(-16, 0, N)
    subnormal = rng.integers(1, 1 << 52, N, dtype=np.int64).view(np.float64)
    middle = rng.uniform(0.5, 2.0, N)
    for name, x in [("all binades", bits), ("near 1", near_one), ("subnormal", subnormal),
                    ("[0.5, 2)", middle)]:
        d = check_ulp(el.log_array, np.log, x, name)
        assert (d == 0).mean() > 0.8, name


EXP_SPECIAL = [
    (0.0, 1.0), (-0.0, 1.0), (np.inf, np.inf), (-np.inf, 0.0), (np.nan, np.nan),
    (5e-324, 1.0), (-5e-324, 1.0), (2.0 ** -60, 1.0), (1.0, np.e),
    (O_THRESHOLD, np.exp(O_THRESHOLD)), (np.nextafter(O_THRESHOLD, np.inf), np.inf),
    (1000.0, np.inf), (U_THRESHOLD, 5e-324), (np.nextafter(U_THRESHOLD, -np.inf), 0.0),
    (-1000.0, 0.0), (-708.39641853226408, np.exp(-708.39641853226408)),   # ~2^-1022
]
LOG_SPECIAL = [
    (1.0, 0.0), (0.0, -np.inf), (-0.0, -np.inf), (np.inf, np.inf), (-np.inf, np.nan),
    (-1.0, np.nan), (-5e-324, np.nan), (np.nan, np.nan), (5e-324, np.log(5e-324)),
    (2.2250738585072014e-308, np.log(2.2250738585072014e-308)), (2.0, np.log(2.0)),
    (np.finfo(np.float64).max, np.log(np.finfo(np.float64).max)), (np.e, 1.0),
    (np.nextafter(1.0, 2.0), np.log(np.nextafter(1.0, 2.0))),
    (np.nextafter(1.0, 0.0), np.log(np.nextafter(1.0, 0.0))),
]


@pytest.mark.parametrize("f,cases", [(el.exp_array, EXP_SPECIAL), (el.log_array, LOG_SPECIAL)],
                         ids=["exp", "log"])
def test_special_values(f, cases):
    x = np.array([c[0] for c in cases])
    want = np.array([c[1] for c in cases])
    got = run(f, x)
    d = ulps(got, want)
    assert (d <= 1).all(), [(x[i], got[i], want[i]) for i in np.nonzero(d > 1)[0]]
    exact = ~np.isfinite(want) | (want == 0) | (want == 1)         # exp(±0) = 1, log(1) = 0
    assert np.array_equal(got[exact], want[exact], equal_nan=True)
    assert not np.signbit(got[(want == 0) & exact]).any()             # +0, never −0


def test_nan_inputs_come_back_and_negative_log_is_the_positive_nan():
    payload = np.array([0x7FF8000000000123, 0xFFF8000000000456],
                       dtype=np.uint64).view(np.float64)              # quiet NaNs, ± sign
    for f in (el.exp_array, el.log_array):
        got = run(f, payload)
        assert got.tobytes() == payload.tobytes()                     # a quiet NaN is itself
    assert run(el.log_array, np.array([-2.0])).view(np.uint64)[0] == 0x7FF8000000000000


@pytest.mark.parametrize("name", ["exp", "log"])
def test_float32_is_the_float64_result_rounded_once(name):
    rng = np.random.default_rng(2)
    x = (rng.uniform(-100, 80, 10_000) if name == "exp"
         else rng.uniform(0, 1e30, 10_000) * 10.0 ** -rng.integers(0, 60, 10_000))
    x = x.astype(np.float32)
    f = getattr(el, name + "_array")
    got = run(f, x)
    assert got.dtype == np.float32
    assert got.tobytes() == run(f, x.astype(np.float64)).astype(np.float32).tobytes()
    with np.errstate(all="ignore"):
        want = getattr(np, name)(x.astype(np.float64)).astype(np.float32)  # numpy's, rounded
    assert ulps(got, want).max() <= 1


CODE = """
import numpy as np
from numba import njit

from grokfast.kernels.cpu import elementary as el
for k in (el.exp_row, el._log_kernel):
    for dt in (np.float32, np.float64):
        k(np.ones(3, dt), np.empty(3, dt))
        print("KERNEL", k.__name__, dt.__name__)
        print(*k.inspect_llvm().values(), *k.inspect_asm().values(), sep="\\n")
"""


def test_compiled_code_has_no_fma_no_fast_math_and_no_library_call(tmp_path):
    """Compiled fresh for Haswell (a target with FMA3, where a contracted multiply–add would show
    as vfmadd): only +, −, ×, ÷, compares and integer operations; no FMA, no fast-math flag, no
    call to libm's or LLVM's exp / log (whose bits depend on the CPU)."""
    parts = compiled(CODE, tmp_path / "cache", "haswell")
    assert len(parts) == 4
    for name, code in parts:
        assert "fdiv double" in code and "bitcast double" in code, name  # the written exp / log
        for bad in ("llvm.fma", "fmuladd", "vfmadd", "vfmsub", "vfnmadd", " fast ", " contract ",
                    " reassoc ", " afn ", "@exp", "@log", "llvm.exp", "llvm.log", "call\t*exp",
                    "callq\texp", "callq\tlog"):
            assert bad not in code, f"{name}: {bad.strip()!r} in the compiled code"
