"""kernels/rows.py (forward, loss, dL/dZ, per-block ∇W2 shares and partials) against autograd on
dense inputs.
In the CPU interpreter here, on the GPU where CUDA is available (the `launch` fixture).

One launch per case, outputs filled with NaN first so unwritten elements fail. Ragged shapes: 18
training samples in blocks of 16, a hidden layer of 24 in slices of 16. Three models: model 0 at
an evaluation step, model 1 between evaluations (its test block must stay unwritten), model 2
inactive (nothing written).
"""
import dataclasses

import pytest
import torch
from grokfast.kernels.triton import common
from grokfast.kernels.triton import launch as klaunch
from grokfast.kernels.triton.rows import rows_fwd_bwd
from tolerances import assert_close
from variants import ROWS_VARIANTS

from grokfast import Config, make_dataset
from grokfast.model import accuracy, activate, data_loss, min_margin

BLOCK_N, BLOCK_H = 16, 16


def _setup(**changes):
    c = Config(p=5, width=24, n_test=7, pairs="ordered", log_every=1, eval_every=2, **changes)
    d = make_dataset(c)
    dt = getattr(torch, c.dtype)
    gen = torch.Generator().manual_seed(4)
    M, D = 3, c.d_in * c.width + c.width * c.p
    theta = (torch.rand(M, D, generator=gen, dtype=torch.float64) * 2 - 1).to(dt)
    loss_f64 = c.loss != "mse" and c.loss_dtype == "float64"
    spec = klaunch.KernelSpec(dtype=dt, activation=c.activation, loss=c.loss, loss_f64=loss_f64,
                             eval_every=c.eval_every, rows_block_n=BLOCK_N, rows_block_h=BLOCK_H)
    return c, d, dt, theta, spec


def _expected(c, d, dt, W1, W2):
    """Logits, σ(Z), dL/dŶ and dL/dZ of the training loss, by autograd on dense X."""
    X = d.X_train.to(dt)
    Z = (X @ W1).requires_grad_()
    H = activate(c.activation, Z)
    logits = (H @ W2).detach().requires_grad_()
    data_loss(logits, d.train_labels, c).backward()
    (H @ W2).backward(logits.grad)
    return logits.detach(), H.detach(), logits.grad, Z.grad


@pytest.mark.parametrize("name", list(ROWS_VARIANTS))
def test_rows_kernel_matches_autograd(name, launch):
    c, d, dt, theta, spec = _setup(**ROWS_VARIANTS[name])
    n, nt, M, H, p = len(d.train_labels), len(d.test_labels), theta.shape[0], c.width, c.p
    nb, nbt = -(-n // BLOCK_N), -(-nt // BLOCK_N)
    idx = torch.cat([d.index_train, d.index_test]).to(torch.int32)
    labels = torch.cat([d.train_labels, d.test_labels]).to(torch.int32)
    ldt = torch.float64 if spec.loss_f64 else dt
    loss_div = spec.loss_div(n, p)
    hp = torch.zeros(M, int(common.N_HP), dtype=torch.float64)
    hp[:, int(common.HP_GRAD_SCALE)] = float(torch.tensor(1.0, dtype=ldt) / loss_div)
    dz = torch.full((M, n, H), float("nan"), dtype=dt)
    dw2 = torch.full((M, nb, H, p), float("nan"), dtype=dt)
    part = torch.full((M, nb + nbt, 3), float("nan"), dtype=torch.float64)
    step = torch.tensor([4, 3, 0], dtype=torch.int32)
    active = torch.tensor([1, 1, 0], dtype=torch.int32)
    launch(rows_fwd_bwd, spec, theta, idx, labels, dz, dw2, part, hp, step, active)

    summed = c.replace(loss_reduction="sum")
    for m in range(2):
        W1, W2 = theta[m, : c.d_in * H].reshape(c.d_in, H), theta[m, c.d_in * H:].reshape(H, p)
        logits, hidden, g_logits, g_z = _expected(c, d, dt, W1, W2)
        assert_close(dz[m], g_z, f"dz[{m}]")
        for b in range(nb):
            rows = slice(b * BLOCK_N, min(n, (b + 1) * BLOCK_N))
            assert_close(dw2[m, b], hidden[rows].T @ g_logits[rows], f"∇W2 share [{m},{b}]")
            lb, yb = logits[rows], d.train_labels[rows]
            assert_close(part[m, b, 0], data_loss(lb, yb, summed).to(ldt), f"loss[{m},{b}]", dtype=dt)
            assert float(part[m, b, 1]) == round(float(accuracy(lb, yb)) * len(yb))
            assert_close(part[m, b, 2], min_margin(lb, yb), f"margin[{m},{b}]", dtype=dt)
        test_logits = activate(c.activation, d.X_test.to(dt) @ W1) @ W2
        if m == 0:  # step 4: an evaluation step
            assert_close(part[m, nb, 0], data_loss(test_logits, d.test_labels, summed).to(ldt),
                         "test loss", dtype=dt)
            assert float(part[m, nb, 1]) == round(float(accuracy(test_logits, d.test_labels)) * nt)
        else:       # step 3: no evaluation, the test block is not touched
            assert torch.isnan(part[m, nb:]).all()
    assert torch.isnan(dz[2]).all() and torch.isnan(dw2[2]).all() and torch.isnan(part[2]).all()


def test_rows_kernel_rejects_bad_launches(monkeypatch):
    monkeypatch.setattr(klaunch, "interpreting", lambda: True)  # CPU tensors pass, on any machine
    c, d, dt, theta, spec = _setup(dtype="float32")
    n = len(d.train_labels)
    M = theta.shape[0]
    idx = torch.cat([d.index_train, d.index_test]).to(torch.int32)
    labels = torch.cat([d.train_labels, d.test_labels]).to(torch.int32)
    bufs = [torch.empty(M, n, c.width, dtype=dt), torch.empty(M, 2, c.width, c.p, dtype=dt),
            torch.empty(M, 3, 3, dtype=torch.float64), torch.zeros(M, int(common.N_HP), dtype=torch.float64),
            torch.zeros(M, dtype=torch.int32), torch.ones(M, dtype=torch.int32)]
    from grokfast.kernels.errors import (
        KernelError,  # the kernels' own error (the backend translates it)
    )
    with pytest.raises(KernelError, match="dtype torch.float16.*backend='torch'"):
        rows_fwd_bwd(spec, theta.half(), idx, labels, *bufs)
    with pytest.raises(KernelError, match="idx has dtype torch.int64"):
        rows_fwd_bwd(spec, theta, idx.long(), labels, *bufs)
    with pytest.raises(KernelError, match="at least 16"):
        dataclasses.replace(spec, rows_block_n=8)
    with pytest.raises(KernelError, match="must be contiguous"):
        rows_fwd_bwd(spec, theta.t().contiguous().t(), idx, labels, *bufs)
    with pytest.raises(KernelError, match="precision='tf32' needs a GPU"):
        rows_fwd_bwd(dataclasses.replace(spec, precision="tf32"), theta, idx, labels, *bufs)
    with pytest.raises(KernelError, match="loss='hinge' has no kernel.*backend='torch'"):
        dataclasses.replace(spec, loss="hinge")


def test_code_constants_follow_the_table():
    """The kernels' named constants (ACT_RELU, …) are their names' positions in common.CODES."""
    prefixes = dict(activation="ACT", loss="LOSS", optimizer="OPT", grad_filter="FILTER")
    for kind, names in common.CODES.items():
        for code, name in enumerate(names):
            assert getattr(common, f"{prefixes[kind]}_{name.upper()}") == code, (kind, name)
            assert klaunch.KernelSpec(**{kind: name}).code(kind) == code
