"""kernels/cpu/adam.py: the numba Adam / AdamW update against a numpy re-statement of the per-step
path's operation order (bitwise: numpy's elementwise ops and sqrt are one IEEE rounding each) and,
through the torch backend's optimizer (grokfast.backends.torch.optim.Adam, portable), against
torch.optim.Adam / AdamW over several steps (the tolerance table); and the portable square root of
⊥Grad / fixed norm (stats.sqrt) against the exact root."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from bitwise import assert_bitwise
from compiled import HASWELL, compiled, instructions
from tolerances import assert_close

from grokfast import Config
from grokfast.backends.torch import stats
from grokfast.backends.torch.optim import make_optimizer
from grokfast.kernels.cpu import adam
from grokfast.model import step_lr

M = 3


def numpy_adam(theta, g, m, v, nss, bc2, decay, wd, omb1, b2, omb2, eps, decoupled, any_wd):
    """optim.Adam.step's portable order in numpy ops of the working dtype (scalars [M, 1])."""
    if decoupled:
        theta = theta * decay
    elif any_wd:
        g = g + theta * wd
    m = m + (g - m) * omb1
    v = v * b2 + (g * omb2) * g
    denom = np.sqrt(v) / bc2 + eps
    return theta + (m * nss) / denom, g, m, v


def random_case(dtype, S, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    rows = lambda: rng.uniform(-1, 1, (M, S)).astype(dt)          # noqa: E731
    arrays = [rows(), rows(), rows() * 0.1, np.abs(rows()) * 0.01]
    scalars = [rng.uniform(lo, hi, M).astype(np.float64).astype(dt) for lo, hi in
               ((-2e-2, -1e-3), (0.05, 1.0), (0.98, 1.0), (0.0, 0.3), (0.05, 0.2), (0.9, 0.999),
                (1e-3, 0.05), (1e-8, 1e-6))]
    return arrays, scalars


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("S", [37, 520])
@pytest.mark.parametrize("decoupled,any_wd", [(True, True), (False, True), (False, False)],
                         ids=["adamw", "adam-wd", "adam"])
def test_adam_step_is_bitwise_the_numpy_order(dtype, S, decoupled, any_wd):
    arrays, scalars = random_case(dtype, S, seed=S + 7 * decoupled + 3 * any_wd)
    expected = numpy_adam(*arrays, *(x[:, None] for x in scalars), decoupled, any_wd)
    got = [a.copy() for a in arrays]
    adam.adam_step(*got, *scalars, decoupled, any_wd)
    for name, a, e in zip(("theta", "g", "exp_avg", "exp_avg_sq"), got, expected):
        assert_bitwise(a, e, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_range_writes_its_range_only(dtype):
    arrays, scalars = random_case(dtype, 101, seed=5)
    row = [np.full(101, np.nan, dtype) for _ in range(4)]
    for r, a in zip(row, arrays):
        r[13:77] = a[1, 13:77]
    adam.adam_range(*row, 13, 77, *(x[1] for x in scalars), False, True)
    expected = numpy_adam(*(a[1, 13:77] for a in arrays), *(x[1] for x in scalars), False, True)
    for r, e in zip(row, expected):
        assert_bitwise(r[13:77], e, "range")
        assert np.isnan(r[:13]).all() and np.isnan(r[77:]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("changes", [dict(optimizer="adam", weight_decay=0.03, betas=(0.8, 0.95)),
                                     dict(optimizer="adamw", weight_decay=0.5, betas=(0.9, 0.98),
                                          warmup_steps=4)],
                         ids=["adam", "adamw-warmup"])
def test_portable_adam_follows_torch_optim(dtype, changes):
    """Eight steps of the backend's portable Adam (the numba kernel) on three models with their
    own lr and weight decay against torch.optim, model by model."""
    configs = [Config(lr=lr, dtype=dtype, **{**changes, "weight_decay":
                                                changes["weight_decay"] * k})
               for k, lr in enumerate((1e-2, 3e-3, 2e-2))]
    dt, S = getattr(torch, dtype), 45
    gen = torch.Generator().manual_seed(4)
    theta = (torch.rand(M, S, generator=gen, dtype=torch.float64) * 2 - 1).to(dt)
    ref = [torch.nn.Parameter(theta[i].clone()) for i in range(M)]
    opt = make_optimizer(configs, theta, torch.zeros_like(theta), torch.zeros_like(theta))
    assert opt.adam_kernel is not None
    cls = torch.optim.AdamW if changes["optimizer"] == "adamw" else torch.optim.Adam
    ref_opt = [cls([ref[i]], lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
               for i, c in enumerate(configs)]
    sched = opt.schedule(0, 8)
    for s in range(8):
        G = (torch.rand(M, S, generator=gen, dtype=torch.float64) * 2 - 1).to(dt)
        for i, c in enumerate(configs):
            ref[i].grad = G[i].clone()
            ref_opt[i].param_groups[0]["lr"] = step_lr(c, s)
            ref_opt[i].step()
        opt.step(theta, G, sched[s], s)
    opt.finish(8)
    for i in range(M):
        assert_close(theta[i], ref[i].detach(), f"θ of model {i}")
        for name in ("exp_avg", "exp_avg_sq"):
            assert_close(getattr(opt, name)[i], ref_opt[i].state[ref[i]][name], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_portable_sqrt_is_the_correctly_rounded_root(dtype):
    """stats.sqrt(x, fixed=True) is the representable number nearest √x (ties impossible), checked
    exactly in rational arithmetic on random magnitudes."""
    rng = np.random.default_rng(11)
    x = (rng.uniform(0.5, 2.0, 3000) * 10.0 ** rng.integers(-30, 30, 3000)).astype(dtype)
    r = stats.sqrt(torch.from_numpy(x), fixed=True).numpy()
    assert r.dtype == x.dtype
    up, down = np.nextafter(r, np.inf), np.nextafter(r, -np.inf)
    for xi, ri, hi, lo in zip(x, r, up, down):
        fx, fr = Fraction(float(xi)), Fraction(float(ri))
        assert ((fr + Fraction(float(lo))) / 2) ** 2 < fx < ((fr + Fraction(float(hi))) / 2) ** 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_norm_target_takes_the_correctly_rounded_root(dtype):
    """stats.target_norm (portable): numerics.param_norm's sums, Python's IEEE math.sqrt of
    their total; within the tolerance table of torch's norm."""
    import math

    from grokfast.numerics import total

    gen = torch.Generator().manual_seed(8)
    W1, W2 = (torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in
              ((26, 40), (40, 13)))
    a, b = W1.double(), W2.double()
    norm = stats.target_norm(W1, W2, fixed=True)
    assert norm == math.sqrt(float(total(a * a) + total(b * b)))
    assert_close(torch.tensor(norm, dtype=torch.float64),
                 torch.cat([a.flatten(), b.flatten()]).norm())


ASM = """
import numpy as np
from grokfast.kernels.cpu import adam
for dt in (np.float32, np.float64):
    x, s = [np.ones((2, 40), dt) for _ in range(4)], np.ones(2, dt)
    adam.adam_step(*x, *[s] * 8, True, False)
for sig, asm in adam._adam_step_kernel.inspect_asm().items():
    print("KERNEL", sig[0].dtype)
    print(asm)
"""


def test_compiled_update_has_vector_square_roots_and_no_fma(tmp_path):
    """Haswell (AVX2 + FMA3): the update runs in ymm lanes with the sqrt instruction
    (vsqrtps / vsqrtpd: IEEE's root, no libm call) and no fused multiply–add anywhere (numba
    without fastmath: no contraction). A numba or LLVM that contracted a product into an add
    or called a library square root instead would fail here."""
    parts = compiled(ASM, tmp_path / "cache", "haswell", HASWELL)
    assert sorted(head for head, _ in parts) == ["float32", "float64"]
    for head, asm in parts:
        ops = instructions(asm)
        suffix = "ps" if head == "float32" else "pd"
        assert [i for i in ops if i[0] == "vsqrt" + suffix and "ymm" in i[-1]], head
        assert not [i for i in ops if "fmadd" in i[0] or "fmsub" in i[0]], head
        assert not [i for i in ops if len(i) > 1 and "sqrt" in i[1] and i[0] != "vsqrt" + suffix
                    and i[0].startswith(("call", "movabs"))], head
