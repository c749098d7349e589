"""kernels/cpu/fma.py: the fused multiply–add rounds once, every micro-kernel output is the FMA chain
its docstring writes (bitwise, against an exact-rational model of fma), the products agree with
numpy's to the tolerance, the threaded split of one model equals the one-thread kernels bitwise,
and the compiled code uses the FMA instruction where the target has it and glibc's fma / fmaf
where it has none (numba's inspect_asm, fresh processes under NUMBA_CPU_NAME / FEATURES).
"""

import numpy as np
import pytest
import torch

from grokfast.backends.torch.split import CoreSplit, cuts
from grokfast.kernels.cpu import fma as kfma
from grokfast.kernels.cpu import grad as cpu_grad
from compiled import HASWELL, compiled, instructions
from fma_order import chain, fma_exact
from tolerances import assert_close

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]


def rand(rng, shape, dt):
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)).astype(dt)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
def test_fma_rounds_once(dt):
    """fma(a, b, c) is the correctly rounded a·b + c, not round(round(a·b) + c)."""
    from numba import njit
    f = njit(lambda a, b, c: kfma.fma(a, b, c))
    rng = np.random.default_rng(0)
    a, b, c = rand(rng, 200, dt), rand(rng, 200, dt), rand(rng, 200, dt)
    got = np.array([f(x, y, z) for x, y, z in zip(a, b, c)], dt)
    want = np.array([fma_exact(x, y, z, dt) for x, y, z in zip(a, b, c)], dt)
    assert got.tobytes() == want.tobytes()
    eps = np.finfo(dt).eps
    one = dt(1)
    x, y = one + dt(eps), one - dt(eps)               # x·y = 1 − ε²: rounded first, 1
    assert f(x, y, -one) == -dt(eps) * dt(eps) != 0 == x * y - one


# (N, w, p, n0, n1): p = 3 and 9 (one masked vector in float32), 11 (8 + a masked vector: the
# paper's p), 16 (whole tiles), 19 (a whole tile and a masked one); row tails of 1 to 5 rows
@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("N,w,p,n0,n1", [(9, 6, 3, 0, 9), (13, 5, 11, 2, 13), (8, 4, 16, 1, 5),
                                         (7, 3, 19, 0, 7), (10, 7, 9, 3, 5)],
                         ids=["p3-rows6+3", "p11-rows6+5", "p16-rows4", "p19-rows6+1", "p9-rows2"])
def test_forward_product_is_the_written_fma_chain(dt, N, w, p, n0, n1):
    """Ŷ[n, j]: k = 0 … w−1 in order, straight into Y [N, p]; rows outside n0 … n1 untouched."""
    rng = np.random.default_rng(w * p + n0)
    H, w2 = rand(rng, (N, w), dt), rand(rng, w * p + 3, dt)
    Y = np.full((N, p), np.nan, dt)
    kfma.forward_product(H, w2, p, n0, n1, Y)
    assert np.isnan(Y[:n0]).all() and np.isnan(Y[n1:]).all()
    for n in range(n0, n1):
        for j in range(p):
            assert Y[n, j] == chain([(H[n, k], w2[k * p + j]) for k in range(w)], dt), (n, j)
    assert_close(Y[n0:n1], (H[n0:n1].astype(np.float64)
                            @ w2[:w * p].reshape(w, p).astype(np.float64)).astype(dt), "Y",
                 dtype=torch.from_numpy(Y).dtype)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("fresh", [False, True], ids=["resume", "fresh"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 13])
def test_product_tiles_are_the_written_fma_chains(dt, fresh, rows):
    """Every tile shape: row tails of 1 … 6 rows, whole and masked column tiles (columns 3 … 29
    of 34: a whole tile and a tail of 10 columns in float32, three whole and a tail of 2 in
    float64), chains resumed from out or started from 0 (out not read); nothing outside the
    range read into a chain (b NaN there) or written (out NaN there), T = 0 included."""
    rng = np.random.default_rng(rows)
    c0, c1 = 3, 29
    for T in (0, 5):
        a, b = rand(rng, (T, rows + 2), dt), rand(rng, (T, 34), dt)
        b[:, :c0] = b[:, c1:] = np.nan
        out = np.full((rows + 2, 34), np.nan, dt)
        start = rand(rng, (rows, c1 - c0), dt)
        out[1:rows + 1, c0:c1] = start
        kfma._product(a, b, out, 1, rows + 1, c0, c1, fresh, None, False)
        assert np.isnan(out[[0, rows + 1]]).all()
        assert np.isnan(out[:, :c0]).all() and np.isnan(out[:, c1:]).all()
        for r in range(1, rows + 1):
            for c in range(c0, c1):
                s0 = 0 if fresh else start[r - 1, c - c0]
                want = chain([(a[t, r], b[t, c]) for t in range(T)], dt, s0)
                assert out[r, c] == want, (T, r, c)


# kernel → cases (N, w, p, lo, hi): the range lo … hi of output rows (j of ∇W2ᵀ, n of dH)
# (the fourth of each: 6- and 2-row register tiles, a row left, 16 tiled columns, a ragged tail;
# and for w2_grad N = 130 terms: the chains resume across product's blocks of KC = 128 terms;
# width 521: the column blocks of one tile from width 4·NC on, with a ragged last one)
GRAD_CASES = {"w2_grad": [(7, 5, 5, 0, 5), (11, 3, 6, 1, 4), (3, 4, 2, 1, 2), (5, 19, 11, 0, 9),
                          (130, 17, 3, 0, 3), (4, 21, 11, 0, 11), (20, 521, 7, 1, 7)],
              "hidden_grad": [(5, 6, 7, 0, 5), (6, 3, 4, 1, 4), (2, 5, 9, 1, 2),
                              (11, 21, 3, 1, 10)]}


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("kernel,case", [(k, c) for k, cs in GRAD_CASES.items() for c in cs],
                         ids=lambda v: v if isinstance(v, str) else "N{}-w{}-p{}-rows{}to{}".format(*v))
def test_gradient_products_are_the_written_fma_chains(dt, kernel, case):
    """∇W2ᵀ[j, k]: n = 0 … N−1 in order; dH[n, k]: j = 0 … p−1 in order; rows outside the range
    untouched (ragged blocks: odd ranges, n and j not multiples of 4)."""
    N, w, p, lo, hi = case
    rng = np.random.default_rng(N + p)
    H, dY, w2t = rand(rng, (N, w), dt), rand(rng, (N, p), dt), rand(rng, (p, w), dt)
    if kernel == "w2_grad":
        out = np.full((p, w), np.nan, dt)
        kfma.w2_grad(H, dY, lo, hi, out)
        terms = lambda r, k: [(dY[n, r], H[n, k]) for n in range(N)]  # noqa: E731
    else:
        out = np.full((N, w), np.nan, dt)
        kfma.hidden_grad(dY, w2t, lo, hi, out)
        terms = lambda r, k: [(dY[r, j], w2t[j, k]) for j in range(p)]  # noqa: E731
    assert np.isnan(out[:lo]).all() and np.isnan(out[hi:]).all()
    for r in range(lo, hi):
        for k in range(w):
            assert out[r, k] == chain(terms(r, k), dt), (r, k)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", [(7, 40, 5, 16, 32), (130, 17, 3, 5, 17), (20, 521, 7, 33, 500),
                                  (4, 21, 11, 0, 21)],
                         ids=lambda v: "N{}-w{}-p{}-units{}to{}".format(*v))
def test_w2_grad_units_is_the_written_chains_on_its_columns(dt, case):
    """∇W2ᵀ[j, k] for every j and hidden units k0 ≤ k < k1 only (split.CoreSplit's ∇W2 by
    units): n = 0 … N−1 in order (N = 130: resumed across KC blocks; width 521: the one-tile
    column blocks, ranges not on tile bounds); columns outside the range untouched."""
    N, w, p, k0, k1 = case
    rng = np.random.default_rng(N + w)
    H, dY = rand(rng, (N, w), dt), rand(rng, (N, p), dt)
    out = np.full((p, w), np.nan, dt)
    kfma.w2_grad_units(H, dY, k0, k1, out)
    assert np.isnan(out[:, :k0]).all() and np.isnan(out[:, k1:]).all()
    for j in range(p):
        for k in range(k0, k1):
            assert out[j, k] == chain([(dY[n, j], H[n, k]) for n in range(N)], dt), (j, k)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("quadratic", [False, True], ids=["relu", "x2"])
@pytest.mark.parametrize("case", GRAD_CASES["hidden_grad"] + [(4, 9, 130, 1, 4)],
                         ids=lambda v: "N{}-w{}-p{}-rows{}to{}".format(*v))
def test_hidden_grad_dz_is_the_chain_then_its_epilogue(dt, quadratic, case):
    """dZ[n, k]: hidden_grad's chain (j = 0 … p−1; p = 130: resumed across KC blocks, the
    epilogue only once the chain ends), then one rounding more as it is stored: ·S[n, k] for x²,
    or kept where S[n, k] > 0 and 0 elsewhere (ReLU; NaN and −0 in S: 0); rows outside the range
    untouched."""
    N, w, p, lo, hi = case
    rng = np.random.default_rng(N + p + quadratic)
    dY, w2t, S = rand(rng, (N, p), dt), rand(rng, (p, w), dt), rand(rng, (N, w), dt)
    S[lo, :5] = [0.0, -0.0, np.nan, np.inf, -np.inf][:min(5, w)]
    out = np.full((N, w), np.nan, dt)
    kfma.hidden_grad_dz(dY, w2t, lo, hi, out, S, quadratic)
    assert np.isnan(out[:lo]).all() and np.isnan(out[hi:]).all()
    for r in range(lo, hi):
        for k in range(w):
            s = chain([(dY[r, j], w2t[j, k]) for j in range(p)], dt)
            want = dt(s * S[r, k]) if quadratic else (s if S[r, k] > 0 else dt(0))
            assert out[r, k].tobytes() == np.asarray(want, dt).tobytes(), (r, k)


def test_product_refuses_strided_columns():
    """The tiles load b[t, c : c+16] and store out[r, c : c+16] as vectors: a b or an out with a
    non-unit stride along its last axis is refused, never read as if it were contiguous."""
    from grokfast.kernels.errors import KernelError
    rng = np.random.default_rng(5)
    a = rng.standard_normal((8, 6)).astype(np.float32)
    b = rng.standard_normal((8, 64)).astype(np.float32)
    out = np.zeros((6, 64), np.float32)
    with pytest.raises(KernelError, match="unit stride"):
        kfma.product(a, b[:, ::2], out[:, :32], 0, 6, 0, 32)
    with pytest.raises(KernelError, match="unit stride"):
        kfma.product(a, b[:, :32], out[:, ::2], 0, 6, 0, 32)
    kfma.product(a, b, out, 0, 6, 0, 64)                          # unit strides: accepted
    assert_close(out, a.T.astype(np.float64) @ b.astype(np.float64), dtype=torch.float32)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("w,p", [(5, 3), (16, 11), (21, 4)], ids=["w5", "w16-p11", "w21"])
def test_w2_transpose_copies_W2(dt, w, p):
    """grad.w2_transpose: W2ᵀ exactly, whole blocks of eight k and a ragged rest."""
    rng = np.random.default_rng(w)
    P1 = 2 * w
    t = rand(rng, P1 + w * p + 3, dt)
    out = np.full((p, w), np.nan, dt)
    cpu_grad.w2_transpose(t, P1, p, out)
    assert out.tobytes() == np.ascontiguousarray(t[P1:P1 + w * p].reshape(w, p).T).tobytes()


def test_cuts_cover_the_range_with_aligned_inner_bounds():
    assert cuts(97, 2, 2) == [(0, 50), (50, 97)]
    assert cuts(40, 3, 16) == [(0, 16), (16, 32), (32, 40)]
    assert cuts(5, 4, 16) == [(0, 5)]
    assert cuts(0, 2, 16) == []


def _model(dt, quadratic, N=45, w=40, p=7, d_in=10, seed=3):
    rng = np.random.default_rng(seed)
    P1 = d_in * w
    theta = rand(rng, (2, P1 + w * p + 8), dt)
    i0, i1 = rng.integers(0, d_in, N), rng.integers(0, d_in, N)
    dlogits = rand(rng, (2, N, p), dt)
    return theta, i0, i1, P1, dlogits


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("quadratic", [False, True], ids=["relu", "x2"])
@pytest.mark.parametrize("threads", [2, 3])
def test_core_split_equals_one_thread_bitwise(dt, quadratic, threads):
    """Forward and backward of one model cut over 2 or 3 threads: the one-thread bits, NaN
    elsewhere untouched (model 1 is not stepped)."""
    theta, i0, i1, P1, dlogits = _model(dt, quadratic)
    N, w, p = dlogits.shape[1], (theta.shape[1] - 8) // 17, dlogits.shape[2]
    results = []
    for kernels in (cpu_grad, CoreSplit(cpu_grad, threads)):
        bufs = {k: np.full(s, np.nan, dt) for k, s in
                dict(Z=(2, N, w), H=(2, N, w), w2t=(2, p, w), g2t=(2, p, w), dH=(2, N, w),
                     logits=(2, N, p), grad=theta.shape).items()}
        models = np.array([0])
        kernels.forward_portable(models, theta, i0, i1, P1, quadratic, dt(0), bufs["Z"],
                                 bufs["H"], bufs["w2t"], bufs["logits"])
        order, starts = cpu_grad.sample_order(i0, i1, P1 // w)
        kernels.backward(models, order, starts, P1, quadratic, dlogits, bufs["Z"], bufs["H"],
                         bufs["w2t"], bufs["g2t"], bufs["dH"], bufs["grad"])
        results.append(bufs)
    for k in results[0]:
        assert results[0][k].tobytes() == results[1][k].tobytes(), k
    assert not np.isnan(results[0]["grad"][0, :P1 + w * p]).any()
    assert np.isnan(results[0]["grad"][1]).all()


ASM = """
import numpy as np
from grokfast.kernels.cpu import fma
for dt in (np.float32, np.float64):
    H, w2, Y = np.ones((8, 16), dt), np.ones(64, dt), np.zeros((8, 4), dt)
    fma.forward_product(H, w2, 4, 0, 8, Y)
    H, dY, g = np.ones((8, 16), dt), np.ones((8, 4), dt), np.zeros((4, 16), dt)
    fma.w2_grad(H, dY, 0, 4, g)
    fma.hidden_grad(dY, g, 0, 8, H)
    fma.hidden_grad_dz(dY, g, 0, 8, H, np.ones((8, 16), dt), True)
for f in (fma.forward_product, fma.w2_grad, fma.hidden_grad, fma.hidden_grad_dz):
    for sig, asm in f.inspect_asm().items():
        print("KERNEL", f.__name__, sig[0].dtype)
        print(asm)
"""
FLOAT_MUL = ("mulss", "mulsd", "mulps", "mulpd", "vmulss", "vmulsd", "vmulps", "vmulpd")  # not mulx


def _asm(tmp_path, cpu_name, features):
    return {tuple(head.split()): code
            for head, code in compiled(ASM, tmp_path / "cache", cpu_name, features)}


def test_compiled_code_fuses_on_fma_targets_and_calls_libm_elsewhere(tmp_path):
    """Haswell (AVX2 + FMA3): vector vfmadd…ps/pd on ymm registers and no multiply instruction at
    all (a product left unfused would show one); generic x86-64 without FMA: glibc's fmaf
    (float32) / fma (float64) loaded for calls and no inline multiply. A numba or LLVM that
    dropped the intrinsic, contracted or split it would fail here. hidden_grad_dz multiplies in
    its epilogue (dH·Z, its own rounding after the chain; its bits are tested above): a
    multiply is expected there, and only there."""
    fused = _asm(tmp_path / "haswell", "haswell", HASWELL)
    assert len(fused) == 8, sorted(fused)
    for (name, dtype), asm in fused.items():
        ops = [ins for ins in instructions(asm)]
        vector = [i for i in ops if i[0].startswith("vfmadd") and i[0][-2:] in ("ps", "pd")
                  and "ymm" in i[-1]]
        assert vector, (name, dtype)
        muls = [i for i in ops if i[0].startswith(FLOAT_MUL)]
        assert bool(muls) == (name == "hidden_grad_dz"), (name, dtype, muls[:3])
    generic = _asm(tmp_path / "generic", "generic", "-avx,-avx2,-fma,-fma4,-avx512f")
    assert len(generic) == 8, sorted(generic)
    for (name, dtype), asm in generic.items():
        want = "$fmaf," if dtype == "float32" else "$fma,"
        ops = instructions(asm)
        libm = [i for i in ops if len(i) > 1 and ("$fma," in i[1] or "$fmaf," in i[1])]
        assert libm and all(want in i[1] for i in libm), (name, dtype, libm[:3])
        assert not [i for i in ops if i[0].startswith("vfmadd")], (name, dtype)
        if name != "hidden_grad_dz":
            assert not [i for i in ops if i[0].startswith(FLOAT_MUL)], (name, dtype)
