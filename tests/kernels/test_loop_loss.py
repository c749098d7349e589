"""kernels/cpu/loop_loss.py: the cross-entropy / stablemax gradient and loss of the native loop and
the per-step path, bitwise the portable torch operations they replace (LossGrad's torch path,
model.data_loss with fixed_order, exp / log through grokfast.numerics), and to the tolerance
table autograd's gradient of the reference loss (torch's own exp / log)."""
import numpy as np
import pytest
import torch
from bitwise import assert_bitwise
from tolerances import assert_close

from grokfast import Config
from grokfast.backends.torch.loss import LossGrad, loss_args
from grokfast.kernels.cpu import loop_loss
from grokfast.model import data_loss

CASES = [(loss, dt, ld, red) for loss in ("cross_entropy", "stablemax")
         for dt in ("float32", "float64") for ld in ("same", "float64") for red in ("mean", "sum")
         if not (dt == "float64" and ld == "float64")]
IDS = ["-".join(c) for c in CASES]


def inputs(seed, dt, M=3, N=13, p=7):
    """Logits [M, N, p] of mixed scales (some rows large enough that e^z overflows unshifted,
    some negative enough for stablemax's 1/(1 − z) branch) and labels [N]."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-2, 3, (M, N, 1), generator=g)
    logits = (torch.randn(M, N, p, generator=g, dtype=torch.float64) * scale).to(dt)
    logits[0, 0] += 800.0
    return logits, torch.randint(0, p, (N,), generator=g)


@pytest.mark.parametrize("loss,dt,ld,red", CASES, ids=IDS)
def test_gradient_is_the_portable_torch_operations_bitwise(loss, dt, ld, red):
    c = Config(p=7, loss=loss, loss_dtype=ld, loss_reduction=red, dtype=dt)
    logits, labels = inputs(len(loss) + len(ld) + len(red), getattr(torch, dt))
    kernel = torch.full_like(logits, float("nan"))
    torch_ops = torch.full_like(logits, float("nan"))
    fused = LossGrad(c, labels, kernel, portable=True)
    assert fused.fused is not None
    fused(logits)
    by_torch = LossGrad(c, labels, torch_ops, portable=True)
    by_torch.fused = None                       # LossGrad's torch operations, numerics' exp / log
    by_torch(logits)
    assert torch.isfinite(kernel).all()
    assert_bitwise(kernel, torch_ops, "dlogits")


def _shift_by_one_maximum(z):
    """The row shift as one running maximum (the loop _shift replaced): the first NaN wins."""
    m = z[0]
    for x in z[1:]:
        if m == m and (x > m or x != x):
            m = x
    return m if m - m == 0 else z.dtype.type(0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_row_shift_is_the_one_running_maximum(dt):
    """_shift's eight running maxima (and its NaN flag) give the shift of one running maximum,
    on row lengths around its 8-wide steps, with NaN, ±inf, all −inf and ±0 ties anywhere;
    mutated to drop the NaN flag or the tail, it fails here."""
    rng = np.random.default_rng(11)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], dt)
    for p in (1, 2, 7, 8, 9, 15, 16, 17, 97):
        for trial in range(60):
            z = rng.standard_normal(p).astype(dt) * dt(10.0 ** rng.integers(-3, 4))
            if trial % 3 == 0:
                z = -np.abs(z)                                  # maximum ±0 when one is added
            for _ in range(rng.integers(0, 3)):
                z[rng.integers(0, p)] = specials[rng.integers(0, len(specials))]
            if trial == 1:
                z[:] = -np.inf
            got, want = loop_loss._shift(z, dt(0)), _shift_by_one_maximum(z)
            assert got == want, (p, z, got, want)


def test_gradient_with_zero_and_minus_inf_logits_is_the_torch_operations_bitwise():
    """Rows whose maximum is a tie of +0 and −0 and rows with −inf logits (finite gradients):
    the kernel's shift gives the portable torch path's bits."""
    c = Config(p=11, loss="cross_entropy", dtype="float32")
    logits, labels = inputs(9, torch.float32, M=2, N=24, p=11)
    logits = -logits.abs()
    logits[:, ::3, 2] = 0.0
    logits[:, ::3, 7] = -0.0
    logits[:, 1::3, 4] = -float("inf")
    kernel, torch_ops = torch.full_like(logits, float("nan")), torch.full_like(logits, float("nan"))
    LossGrad(c, labels, kernel, portable=True)(logits)
    by_torch = LossGrad(c, labels, torch_ops, portable=True)
    by_torch.fused = None
    by_torch(logits)
    assert torch.isfinite(kernel).all()
    assert_bitwise(kernel, torch_ops, "dlogits")


@pytest.mark.parametrize("loss,dt,ld,red", CASES, ids=IDS)
def test_loss_is_model_data_loss_bitwise_and_the_reference_to_tolerance(loss, dt, ld, red):
    c = Config(p=7, loss=loss, loss_dtype=ld, loss_reduction=red, dtype=dt)
    logits, labels = inputs(3, getattr(torch, dt), N=21)
    lt = torch.float64 if ld == "float64" else logits.dtype
    args = loss_args(c, 13, 7, lt, rows=21)     # scratch for more rows than the training set
    acc = np.full(1, np.nan, logits.numpy().dtype)
    for m in range(logits.shape[0]):
        got = loop_loss.loss_value(args, logits[m].numpy(), labels.numpy(), acc)
        want = data_loss(logits[m], labels, c, fixed_order=True)
        assert got == acc[0]                    # returned as the working dtype holds it
        assert_bitwise(acc, want.numpy().reshape(1), f"loss of model {m}")
        assert_close(torch.from_numpy(acc), data_loss(logits[m], labels, c).reshape(1),
                     "against torch's exp / log")


@pytest.mark.parametrize("loss", ["cross_entropy", "stablemax"])
def test_gradient_agrees_with_autograd_of_the_reference_loss(loss):
    c = Config(p=7, loss=loss, dtype="float64")
    logits, labels = inputs(5, torch.float64)
    logits[0, 0] -= 800.0
    out = torch.full_like(logits, float("nan"))
    LossGrad(c, labels, out, portable=True)(logits)
    for m in range(logits.shape[0]):
        z = logits[m].clone().requires_grad_(True)
        data_loss(z, labels, c).backward()
        assert_close(out[m], z.grad, f"model {m}")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "stablemax"])
def test_rows_give_the_whole_gradient_bits_for_any_cut(loss):
    """A large model alone (CoreSplit.step through rows.rows_step): LossGrad.rows's arguments
    for a range of rows, each range with its own scratch, run as rows_step runs them on any cut
    into ranges and blocks, in any order, give the one-call gradient bit for bit."""
    from grokfast.kernels.cpu import loop_loss, split_loss
    c = Config(p=7, loss=loss, loss_dtype="float64" if loss != "mse" else "same",
               dtype="float32")
    logits, labels = inputs(7, torch.float32, M=2, N=101)
    alone = torch.full_like(logits, float("nan"))
    LossGrad(c, labels, alone, portable=True)(logits)
    y = logits.numpy()
    for cut in ((0, 101), (0, 16, 101), (0, 48, 64, 101)):
        out = torch.full_like(logits, float("nan"))
        grad, dst = LossGrad(c, labels, out, portable=True), out.numpy()
        for m in (1, 0):
            for a, b in reversed(list(zip(cut[:-1], cut[1:]))):
                loss, lab, scale = grad.rows((a, b), b - a)
                if loss is None:
                    split_loss.mse_grad_rows(y[m], lab, scale, dst[m], a, b)
                else:
                    loop_loss.loss_grad(loss, y[m][a:b], lab[a:b], scale, dst[m][a:b])
        assert_bitwise(out, alone, f"cut {cut}")
