"""kernels/cpu/rows.py: the row phase in blocks of rows (forward, loss gradient, dZ per block) writes
bit for bit what grad.forward_rows, the loss kernel and grad.backward_hidden write over the whole
range, and nothing outside it: ranges of several blocks with a ragged last one, x² and ReLU, MSE
(split_loss.mse_grad_rows) and cross-entropy / stablemax (loop_loss.loss_grad, float64 logits),
float32 and float64, on fresh random inputs; and step_models, the one-thread path built on it, writes
what the forward, loss and backward kernels write for the models it lists, and nothing else."""
import numpy as np
import pytest
import torch

from grokfast import Config
from grokfast.backends.torch.loss import loss_args
from grokfast.kernels.cpu import grad, loop_loss, rows, split_loss

P, W, N = 5, 16, 2 * rows.BLOCK + 23
CASES = [("mse", "float32", True), ("mse", "float64", False), ("cross_entropy", "float32", False),
         ("stablemax", "float64", True)]


def model(rng, dt):
    """θ [2, S] (model 1 is the one stepped), samples, labels, W2ᵀ and NaN-filled outputs."""
    P1 = 2 * P * W
    theta = (rng.standard_normal((2, P1 + W * P)) * 0.5).astype(dt)
    i0, i1 = rng.integers(0, P, N), rng.integers(P, 2 * P, N)
    labels = rng.integers(0, P, N)
    w2t = np.empty((2, P, W), dt)
    grad.w2_transpose(theta[1], P1, P, w2t[1])
    return P1, theta, i0, i1, labels, w2t


def outputs(dt):
    return {k: np.full((2, N, n), np.nan, dt)
            for k, n in dict(Z=W, H=W, logits=P, dlogits=P, dZ=W).items()}


@pytest.mark.parametrize("loss,dt,quadratic", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_blocks_write_the_bits_of_the_whole_range(loss, dt, quadratic):
    rng = np.random.default_rng(len(loss) + quadratic)
    P1, theta, i0, i1, labels, w2t = model(rng, dt)
    zero, r0, r1 = np.dtype(dt).type(0), 3, N - 2
    if loss == "mse":
        args = (None, labels, np.dtype(dt).type(2 / (N * P)))
    else:
        c = Config(p=P, loss=loss, loss_dtype="float64", dtype=dt)
        args = loss_args(c, N, P, torch.float64, rows=rows.BLOCK)
        args = (args, labels, args[2])
    want, got = outputs(dt), outputs(dt)
    grad.forward_rows(1, theta, i0, i1, P1, quadratic, zero, want["Z"], want["H"],
                      want["logits"], r0, r1)
    if args[0] is None:
        split_loss.mse_grad_rows(want["logits"][1], labels, args[2], want["dlogits"][1], r0, r1)
    else:
        whole = loss_args(Config(p=P, loss=loss, loss_dtype="float64", dtype=dt), N, P,
                          torch.float64, rows=r1 - r0)
        loop_loss.loss_grad(whole, want["logits"][1][r0:r1], labels[r0:r1], whole[2],
                            want["dlogits"][1][r0:r1])
    grad.backward_hidden(1, quadratic, want["dlogits"], w2t, want["Z"], want["H"], want["dZ"],
                         r0, r1)
    rows.rows_step(1, theta, i0, i1, P1, quadratic, zero, got["Z"], got["H"], got["logits"],
                   *args, got["dlogits"], w2t, got["dZ"], r0, r1)
    for k in ("H", "logits", "dlogits", "dZ") + (("Z",) if quadratic else ()):
        assert np.isnan(got[k][0]).all() and np.isnan(got[k][1, :r0]).all(), k
        assert np.isnan(got[k][1, r1:]).all(), k
        assert got[k][1, r0:r1].tobytes() == want[k][1, r0:r1].tobytes(), k
        assert np.isfinite(got[k][1, r0:r1]).all(), k


@pytest.mark.parametrize("quadratic", [True, False], ids=["x2", "relu"])
def test_step_models_is_forward_loss_backward_of_the_listed_models(quadratic):
    """step_models over models [2, 0] of three: grad.forward_portable, the MSE gradient and
    grad.backward's bits in every output of those models (θ's gradient included); model 1's
    outputs untouched."""
    rng, dt, M = np.random.default_rng(7 + quadratic), "float32", 3
    P1 = 2 * P * W
    theta = (rng.standard_normal((M, P1 + W * P)) * 0.5).astype(dt)
    i0, i1, labels = rng.integers(0, P, N), rng.integers(P, 2 * P, N), rng.integers(0, P, N)
    order, starts = grad.sample_order(i0, i1, 2 * P)
    zero, scale, models = np.float32(0), np.float32(2 / (N * P)), np.array([2, 0])
    runs = []
    for fused in (False, True):
        b = {k: np.full((M, N, n), np.nan, dt)
             for k, n in dict(Z=W, H=W, logits=P, dlogits=P, dZ=W).items()}
        b.update(w2t=np.full((M, P, W), np.nan, dt), g2t=np.full((M, P, W), np.nan, dt),
                 grad=np.full(theta.shape, np.nan, dt))
        if fused:
            rows.step_models(models, theta, i0, i1, P1, quadratic, zero, b["Z"], b["H"],
                             b["logits"], None, labels, scale, b["dlogits"], b["w2t"], b["g2t"],
                             b["dZ"], b["grad"], order, starts)
        else:
            grad.forward_portable(models, theta, i0, i1, P1, quadratic, zero, b["Z"], b["H"],
                                  b["w2t"], b["logits"])
            for m in models:
                split_loss.mse_grad_rows(b["logits"][m], labels, scale, b["dlogits"][m], 0, N)
            grad.backward(models, order, starts, P1, quadratic, b["dlogits"], b["Z"], b["H"],
                          b["w2t"], b["g2t"], b["dZ"], b["grad"])
        runs.append(b)
    for k, v in runs[1].items():
        if k == "Z" and not quadratic:
            continue
        assert np.isnan(v[1]).all(), k
        assert v[models].tobytes() == runs[0][k][models].tobytes(), k
    assert np.isfinite(runs[1]["grad"][models, :P1 + W * P]).all()


@pytest.mark.parametrize("dt,quadratic", [("float32", True), ("float64", False)],
                         ids=["float32-x2", "float64-relu"])
def test_forward_logits_is_forward_portables_logits(dt, quadratic):
    """forward_logits over models [2, 0] of three and a range of several blocks with a ragged
    last one, Z and H in a one-block scratch: grad.forward_portable's logits bit for bit in the
    range, nothing written outside it or to model 1."""
    rng, M = np.random.default_rng(3 + quadratic), 3
    P1 = 2 * P * W
    theta = (rng.standard_normal((M, P1 + W * P)) * 0.5).astype(dt)
    i0, i1 = rng.integers(0, P, N), rng.integers(P, 2 * P, N)
    zero, models, r0, r1 = np.dtype(dt).type(0), np.array([2, 0]), 5, N - 1
    want = {k: np.full((M, N, n), np.nan, dt) for k, n in dict(Z=W, H=W, logits=P).items()}
    grad.forward_portable(models, theta, i0, i1, P1, quadratic, zero, want["Z"], want["H"],
                          np.empty((M, P, W), dt), want["logits"])
    got = np.full((M, N, P), np.nan, dt)
    Zs, Hs = np.full((rows.BLOCK, W), np.nan, dt), np.full((rows.BLOCK, W), np.nan, dt)
    rows.forward_logits(models, theta, i0, i1, P1, quadratic, zero, Zs, Hs, got, r0, r1)
    assert np.isnan(got[1]).all() and np.isnan(got[:, :r0]).all() and np.isnan(got[:, r1:]).all()
    assert got[models, r0:r1].tobytes() == want["logits"][models, r0:r1].tobytes()
    assert np.isfinite(got[models, r0:r1]).all()
