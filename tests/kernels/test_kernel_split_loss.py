"""kernels/cpu/split_loss.py: the MSE gradient over a range of rows is update.mse_grad's bits on
those rows and writes nothing else; the MSE sum is numerics.total((Ŷ − Y) ** 2) bitwise (the
order of reduce.py, checked by tests/backends/test_numerics.py), and stats.losses takes it with
the bits of model.data_loss."""
import numpy as np
import pytest
import torch

from grokfast import Config
from grokfast.backends.torch.stats import losses
from grokfast.kernels.cpu import split_loss
from grokfast.kernels.cpu import update as cpu_update
from grokfast.model import data_loss
from grokfast.numerics import total
from bitwise import assert_bitwise

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]
SHAPES = [(45, 7), (1, 1), (3, 3), (16, 8), (97, 13)]
SHAPE_IDS = ["45x7", "1x1", "3x3-tail-only", "16x8-no-tail", "97x13"]


def _case(dt, N, p, seed):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((N, p)) * 10.0 ** rng.integers(-3, 3, (N, p))).astype(dt)
    return y, rng.integers(0, p, N).astype(np.int64)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("r0,r1", [(0, 45), (0, 16), (16, 45), (7, 8), (20, 20)],
                         ids=["all", "first", "last", "one", "empty"])
def test_mse_grad_rows_is_mse_grad_on_its_rows(dt, r0, r1):
    y, labels = _case(dt, 45, 7, 1)
    scale = dt(2) * (dt(1) / dt(45 * 7))
    want = np.full((1, 45, 7), np.nan, dt)
    cpu_update.mse_grad(y[None], labels, scale, want)
    got = np.full((45, 7), np.nan, dt)
    split_loss.mse_grad_rows(y, labels, scale, got, r0, r1)
    assert_bitwise(got[r0:r1], want[0, r0:r1], "rows")
    assert np.isnan(got[:r0]).all() and np.isnan(got[r1:]).all()


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("N,p", SHAPES, ids=SHAPE_IDS)
def test_mse_grad_rows_is_autograds_subtraction_then_product(dt, N, p):
    """(Ŷ − Y)·scale as torch forms it, two roundings, bitwise: ±0, ±inf and NaN included (the
    kernel multiplies the entries off the label directly: y − 0 is y)."""
    y, labels = _case(dt, N, p, N + p)
    flat = y.reshape(-1)
    flat[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0][:flat.size]
    scale = dt(1) / dt(N * p)
    yt = torch.from_numpy(y)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), p).to(yt.dtype)
    want = (yt - onehot) * torch.tensor(scale, dtype=yt.dtype)
    got = np.full((N, p), 7, dt)
    split_loss.mse_grad_rows(y, labels, scale, got, 0, N)
    assert got.tobytes() == want.numpy().tobytes()


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("N,p", SHAPES, ids=SHAPE_IDS)
def test_mse_sum_is_the_total_of_the_squares(dt, N, p):
    y, labels = _case(dt, N, p, N * p)
    yt = torch.from_numpy(y)
    want = total((yt - torch.nn.functional.one_hot(torch.from_numpy(labels), p).to(yt.dtype)) ** 2)
    got = torch.tensor(split_loss.mse_sum(y, labels, dt(0)), dtype=yt.dtype)
    assert_bitwise(got, want, "sum")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses_take_the_bits_of_data_loss(dtype, reduction):
    c = Config(p=13, dtype=dtype, loss="mse", loss_reduction=reduction)
    y, labels = _case(np.dtype(dtype).type, 97, 13, 5)
    logits = torch.from_numpy(np.stack([y, y[::-1].copy() * 3]))
    lab = torch.from_numpy(labels)
    want = torch.stack([data_loss(logits[i], lab, c, fixed_order=True) for i in range(2)])
    assert_bitwise(losses(logits, lab, [c, c], fixed=True), want, "losses")
