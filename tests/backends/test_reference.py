"""The reference trainer against hand-derived formulas, finite differences and direct computation."""
import math

import numpy as np
import pytest
import torch
from tolerances import assert_close
from variants import LOSS_VARIANTS, OPTIMIZER_VARIANTS

import grokfast
from grokfast import Config, make_dataset
from grokfast.backends.reference import TwoLayerNet
from grokfast.model import activate, data_loss, init_params, stablemax_s

F64 = dict(dtype="float64")


def hand_gradients(c: Config, X, labels, W1, W2):
    """∇L by the chain rule: Z = X W1, H = σ(Z), Ŷ = H W2; dW2 = Hᵀ dŶ, dW1 = Xᵀ[(dŶ W2ᵀ) ⊙ σ'(Z)]."""
    n, p = X.shape[0], W2.shape[1]
    Z = X @ W1
    H = activate(c.activation, Z)
    Yhat = H @ W2
    Y = torch.nn.functional.one_hot(labels, p).double()
    if c.loss == "mse":
        dY = 2 * (Yhat - Y)
        scale = n * p
    elif c.loss == "cross_entropy":
        dY = torch.softmax(Yhat, 1) - Y
        scale = n
    else:
        s = stablemax_s(Yhat)
        ds = torch.where(Yhat >= 0, torch.ones_like(Yhat), 1 / (1 - Yhat.clamp(max=0)) ** 2)
        dY = ds / s.sum(1, keepdim=True) - Y * ds / s
        scale = n
    if c.loss_reduction == "mean":
        dY = dY / scale
    dsig = (Z > 0).double() if c.activation == "relu" else 2 * Z
    return X.T @ ((dY @ W2.T) * dsig), H.T @ dY


@pytest.mark.parametrize("name", list(LOSS_VARIANTS))
@pytest.mark.parametrize("encoding", ["sum", "concat"])
def test_gradients_hand_derived_and_finite_differences(name, encoding):
    c = Config(p=5, width=12, n_test=4, encoding=encoding, pairs="ordered", seed=1,
               **LOSS_VARIANTS[name], **F64)
    act = c.activation
    d = make_dataset(c)
    W1, W2 = init_params(c)
    net = TwoLayerNet(W1, W2, act)
    X = d.X_train
    L = data_loss(net(X), d.train_labels, c)
    L.backward()
    g1, g2 = hand_gradients(c, X, d.train_labels, W1, W2)
    assert_close(net.W1.grad, g1, "dW1")
    assert_close(net.W2.grad, g2, "dW2")
    # central finite differences on a few random coordinates
    gen = torch.Generator().manual_seed(2)
    for W, g in ((W1, g1), (W2, g2)):
        for _ in range(4):
            i = tuple(int(torch.randint(s, (1,), generator=gen)) for s in W.shape)
            h = 1e-6
            Wp, Wm = W.clone(), W.clone()
            Wp[i] += h
            Wm[i] -= h
            args = lambda A: (A, W2) if W is W1 else (W1, A)
            with torch.no_grad():
                Lp = data_loss(TwoLayerNet(*args(Wp), act)(X), d.train_labels, c)
                Lm = data_loss(TwoLayerNet(*args(Wm), act)(X), d.train_labels, c)
            fd = (Lp - Lm) / (2 * h)
            assert abs(float(fd) - float(g[i])) <= 1e-6 * max(1.0, abs(float(g[i])))


def _manual_run(c: Config, steps: int):
    """The update rules written out directly (not torch.optim), on autograd data-loss gradients."""
    d = make_dataset(c)
    W = list(init_params(c))
    X, y = d.X_train, d.train_labels
    buf = [None, None]
    m = [torch.zeros_like(w) for w in W]
    v = [torch.zeros_like(w) for w in W]
    b1, b2 = c.betas
    for t in range(1, steps + 1):
        Wg = [w.clone().requires_grad_() for w in W]
        data_loss(activate(c.activation, X @ Wg[0]) @ Wg[1], y, c).backward()
        lr = c.lr * (min(1.0, t / c.warmup_steps) if c.warmup_steps else 1.0)
        for k in range(2):
            g, w = Wg[k].grad, W[k]
            if c.optimizer in ("gd", "sgd"):
                g = g + c.weight_decay * w
                if c.momentum:
                    buf[k] = g.clone() if buf[k] is None else c.momentum * buf[k] + g
                    g = g + c.momentum * buf[k] if c.nesterov else buf[k]
                W[k] = w - lr * g
            else:
                if c.optimizer == "adamw":
                    w = w * (1 - lr * c.weight_decay)
                else:
                    g = g + c.weight_decay * w
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mhat, vhat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
                W[k] = w - lr * mhat / (vhat.sqrt() + c.eps)
    return W


@pytest.mark.parametrize("name", list(OPTIMIZER_VARIANTS))
def test_optimizer_steps_match_direct_formulas(name):
    c = Config(p=5, width=8, n_test=3, steps=6, log_every=1, eval_every=1,
               **OPTIMIZER_VARIANTS[name], **F64)
    r = grokfast.reference.train(c)
    W1, W2 = _manual_run(c, 6)
    assert_close(r.W1, W1, "W1")
    assert_close(r.W2, W2, "W2")


class Snapshots:
    """Observer keeping θ_s at every step."""

    def __init__(self):
        self.theta = {}

    def pause_steps(self, steps):
        return range(steps + 1)

    def observe(self, step, W1, W2):
        self.theta[step] = (W1[0].clone(), W2[0].clone())

    def extras(self):
        return [{}]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_statistics_match_direct_computation(loss):
    c = Config(p=7, width=16, n_test=5, loss=loss, lr=0.3 if loss == "mse" else 0.05,
               steps=6, log_every=2, eval_every=4, weight_decay=0.01, **F64)
    snaps = Snapshots()
    r = grokfast.reference.train(c, observers=[snaps])
    d = make_dataset(c)
    h = r.history
    assert list(h["step"]) == [0, 2, 4]
    for row, s in enumerate(h["step"].astype(int)):
        W1, W2 = snaps.theta[s]
        N1, N2 = snaps.theta[s + 1]
        logits = activate(c.activation, d.X_train @ W1) @ W2
        g1, g2 = hand_gradients(c, d.X_train, d.train_labels, W1, W2)
        theta = torch.cat([W1.flatten(), W2.flatten()])
        g = torch.cat([g1.flatten(), g2.flatten()])
        delta = torch.cat([(N1 - W1).flatten(), (N2 - W2).flatten()])
        cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))
        correct = logits[torch.arange(len(logits)), d.train_labels]
        other = logits.clone()
        other[torch.arange(len(logits)), d.train_labels] = -math.inf
        expect = dict(
            train_loss=float(data_loss(logits, d.train_labels, c)),
            train_acc=float((logits.argmax(1) == d.train_labels).double().mean()),
            norm_W1=float(W1.norm()), norm_W2=float(W2.norm()), norm=float(theta.norm()),
            grad_norm_W1=float(g1.norm()), grad_norm_W2=float(g2.norm()), grad_norm=float(g.norm()),
            cos_grad_W1=cos(g1.flatten(), W1.flatten()), cos_grad_W2=cos(g2.flatten(), W2.flatten()),
            cos_grad=cos(g, theta), update_norm=float(delta.norm()), cos_update=cos(delta, -theta),
            min_margin=float((correct - other.max(1).values).min()))
        if s % c.eval_every == 0:
            tl = activate(c.activation, d.X_test @ W1) @ W2
            expect["test_loss"] = float(data_loss(tl, d.test_labels, c))
            expect["test_acc"] = float((tl.argmax(1) == d.test_labels).double().mean())
        else:
            assert math.isnan(h["test_loss"][row]) and math.isnan(h["test_acc"][row])
        for k, v in expect.items():
            assert_close(h[k][row], v, f"{k}@{s}")


def test_filters_and_orthograd_and_fixed_norm_inside_the_reference_step():
    """One reference step with EMA + ⊥Grad + fixed norm equals the formulas applied by hand."""
    c = Config(p=5, width=8, n_test=3, steps=2, grad_filter="ema", filter_alpha=0.9,
               filter_lamb=3.0, orthograd=True, fixed_norm=True, lr=0.2, weight_decay=0.01,
               filter_normalize_lr=True, **F64)
    r = grokfast.reference.train(c)
    d = make_dataset(c)
    W = list(init_params(c))
    target = math.sqrt(sum(float(w.pow(2).sum()) for w in W))
    mu = [None, None]
    for t in range(2):
        g = hand_gradients(c, d.X_train, d.train_labels, *W)
        new = []
        for k in range(2):
            mu[k] = g[k] if mu[k] is None else mu[k]
            mu[k] = mu[k] * 0.9 + g[k] * (1 - 0.9)
            gk = g[k] + mu[k] * 3.0
            w = W[k].flatten()
            go = gk.flatten() - (w @ gk.flatten()) / (w @ w + 1e-30) * w
            gk = (go * gk.norm() / (go.norm() + 1e-30)).reshape(gk.shape)
            new.append(W[k] - (0.2 / 4.0) * (gk + 0.01 * W[k]))
        norm = math.sqrt(sum(float(w.pow(2).sum()) for w in new))
        W = [w * (target / norm) for w in new]
    assert_close(r.W1, W[0], "W1")
    assert_close(r.W2, W[1], "W2")
    assert math.sqrt(float(r.W1.pow(2).sum() + r.W2.pow(2).sum())) == pytest.approx(target, rel=1e-12)


def test_divergence_stops_cleanly_and_keeps_history():
    c = Config(loss_reduction="sum", activation="quadratic", lr=1.0, steps=2000, log_every=1,
               eval_every=1)
    r = grokfast.reference.train(c)
    assert r.diverged and "non-finite train loss" in r.diverged
    assert 2 <= r.steps_done < c.steps and f"at step {r.steps_done}" in r.diverged
    assert np.array_equal(r.history["step"], np.arange(r.steps_done))  # every step before it kept
    assert np.isfinite(r.history["train_loss"]).all()


def test_short_paper_real_run_memorizes():
    r = grokfast.reference.train(Config.preset("paper-real", steps=1000))
    assert r.memorization_step is not None and r.memorization_step <= 1000
    assert r.history["train_acc"][-1] == 1.0 and r.diverged is None
    assert r.history["norm"][0] > 0 and len(r.history["step"]) == 10


def test_reference_is_deterministic():
    c = Config(p=7, width=16, n_test=5, steps=30, grad_filter="ma", filter_window=5, **F64)
    a, b = grokfast.reference.train(c), grokfast.reference.train(c)
    assert torch.equal(a.W1, b.W1) and torch.equal(a.W2, b.W2)
    for k in a.history:
        assert np.array_equal(a.history[k], b.history[k], equal_nan=True)
