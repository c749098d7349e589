"""The App. D alignment probe: tangent projection, σ_min(J), the §3 toy, and the engine observer."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from tolerances import assert_close

import grokfast
from grokfast import Config, make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import init_params
from grokfast.theory.probe import (
    AlignmentProbe,
    FunctionJacobian,
    TwoLayerJacobian,
    alignment,
    alignment_generic,
    lanczos_min_eigenvalue,
    sigma_min,
    tangent_projection,
    two_layer_functions,
)


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def small_net(p=5, width=64, seed=0):
    """A freshly initialized net with d = 2·p·width ≫ n·p: J is well conditioned."""
    config = Config(p=p, width=width, n_test=3, seed=seed)
    data = make_dataset(config)
    W1, W2 = (t.double() for t in init_params(config))
    return config, data, W1, W2


def outputs_fn(W1, W2, data):
    """σ(X W1) W2 of flat θ, written independently of TwoLayerJacobian (rows gathered, not X @ W1)."""
    k, i0, i1 = W1.numel(), data.index_train[:, 0], data.index_train[:, 1]
    return lambda th: (torch.relu(th[:k].reshape(W1.shape)[i0] + th[:k].reshape(W1.shape)[i1])
                       @ th[k:].reshape(W2.shape))


def test_closed_form_jacobian_matches_autograd():
    _, data, W1, W2 = small_net()
    jac = TwoLayerJacobian(W1, W2, data.X_train, "relu")
    theta = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    ref = FunctionJacobian(outputs_fn(W1, W2, data), theta)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(jac.dim_in, generator=gen, dtype=torch.float64)
    u = torch.randn(jac.dim_out, generator=gen, dtype=torch.float64)
    assert_close(jac.jvp(v), ref.jvp(v), "J v")
    assert_close(jac.vjp(u), ref.vjp(u), "Jᵀ u")
    assert_close(jac.gram(), ref.gram(), "J Jᵀ (closed-form NTK Gram)")


@pytest.mark.parametrize("loss,reduction", [("mse", "mean"), ("mse", "sum"), ("cross_entropy", "mean")])
def test_closed_form_loss_gradient_matches_autograd(loss, reduction):
    config = Config(p=5, width=24, n_test=3, loss=loss, loss_reduction=reduction)
    W1, W2 = (t.double() for t in init_params(config))
    loss_fn, grad_fn, _ = two_layer_functions(config, make_dataset(config))
    theta = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    assert_close(grad_fn(theta), torch.func.grad(loss_fn)(theta), f"∇L ({loss}, {reduction})")


@pytest.mark.parametrize("precondition", [True, False], ids=["pcg", "cg"])
def test_tangent_projection_is_in_null_space_and_idempotent(precondition):
    _, data, W1, W2 = small_net()
    jac = TwoLayerJacobian(W1, W2, data.X_train, "relu")
    theta = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    g, info = tangent_projection(jac, -theta, tol=1e-14, precondition=precondition)
    print("CG:", info)
    assert info["tangent_residual"] < 1e-12                      # ‖J g̃‖ / ‖J θ‖
    g2, _ = tangent_projection(jac, g, tol=1e-14, precondition=precondition)
    assert_close(g2, g, "projecting twice")
    # against the dense projector I − Jᵀ(JJᵀ)⁻¹J
    J = torch.func.jacrev(outputs_fn(W1, W2, data))(theta).reshape(jac.dim_out, -1)
    dense = -theta + J.T @ torch.linalg.solve(J @ J.T, J @ theta)
    assert_close(g, dense, "CG projection vs dense")


def test_sigma_min_dense_and_lanczos_agree():
    _, data, W1, W2 = small_net()
    jac = TwoLayerJacobian(W1, W2, data.X_train, "relu")
    exact = torch.linalg.svdvals(torch.func.jacrev(outputs_fn(W1, W2, data))(
        torch.cat([W1.reshape(-1), W2.reshape(-1)])).reshape(jac.dim_out, -1))[-1]
    assert_close(f64(sigma_min(jac)), exact, "σ_min from the dense Gram")
    # Lanczos run to the full dimension reproduces the spectrum's bottom
    lam = lanczos_min_eigenvalue(lambda w: jac.jvp(jac.vjp(w)), jac.dim_out, iters=jac.dim_out)
    assert_close(f64(math.sqrt(lam)), exact, "σ_min from full Lanczos")
    # truncated Lanczos: an upper bound on λ_min
    assert sigma_min(jac, dense_limit=0, lanczos_iters=10) >= float(exact)


@pytest.mark.parametrize("momentum,lr,steps", [(0.0, 0.25, 1), (0.9, 0.1, 600)])
def test_paper_toy_linear_model(momentum, lr, steps):
    """§3: f(w) = w·x, x = (1, 1), y = 2; Z is the line w1 + w2 = 2, its tangent is (1, −1)/√2."""
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    f = lambda w: (w @ x).reshape(1)                                      # noqa: E731
    theta = torch.tensor([3.0, 0.5], dtype=torch.float64)                 # off Z by 1.5/√2
    tangent = -theta + (theta @ x) * x / 2                                # analytic P_T(−θ)
    assert_close(tangent, torch.tensor([-1.25, 1.25], dtype=torch.float64), "analytic tangent")
    step = torch.tensor([-0.3, 0.3], dtype=torch.float64)                 # a step along Z
    a = alignment_generic(f, torch.tensor([2.0], dtype=torch.float64), theta - step, theta,
                          gd_steps=steps, gd_lr=lr, gd_momentum=momentum, return_tangent=True)
    assert_close(a.tangent, tangent, "g̃ on the toy")
    assert_close(f64(a.cos), torch.tensor(1.0, dtype=torch.float64), "cos(Δθ, g̃)")
    assert_close(f64(a.dist), torch.tensor(1.5 / math.sqrt(2), dtype=torch.float64),
                 "‖θ − proj_Z θ‖")
    assert_close(f64(a.sigma_min), torch.tensor(math.sqrt(2.0), dtype=torch.float64),
                 "σ_min(J) = ‖x‖")
    assert a.residual < 1e-24
    away = alignment_generic(f, torch.tensor([2.0], dtype=torch.float64), theta + step, theta,
                             gd_steps=steps, gd_lr=lr, gd_momentum=momentum)
    assert_close(f64(away.cos), torch.tensor(-1.0, dtype=torch.float64), "opposite step")


def test_alignment_on_saved_parameters_reaches_zero_loss():
    config = Config(p=7, width=64, n_test=5, steps=400, log_every=100, eval_every=100)
    r_prev = grokfast.reference.train(config.replace(steps=390))
    r = grokfast.reference.train(config)
    a = alignment(config, None, r_prev.params, r.params, return_tangent=True)
    print(a)
    assert a.residual < 1e-3 * r.final["train_loss"]          # θ' is much closer to Z than θ
    assert a.dist > 0 and a.sigma_min > 0 and -1 <= a.cos <= 1
    assert a.tangent_residual < 1e-8
    with pytest.raises(GrokfastError, match="do not fit"):
        alignment(config.replace(width=32), None, r_prev.params, r.params)


def _backends():
    out = ["reference"]
    if importlib.util.find_spec("grokfast.backends.torch.stepper") is not None:
        out.append("torch")
    return out


@pytest.mark.parametrize("backend", _backends())
def test_probe_never_changes_training(backend):
    config = Config(p=7, width=48, n_test=5, steps=300, log_every=10, eval_every=50)
    data = make_dataset(config)
    probe = AlignmentProbe(config, data, every=100, lag=10)
    seeds = [0, 1]
    plain = grokfast.train(config, seeds=seeds, backend=backend)
    probed = grokfast.train(config, seeds=seeds, backend=backend, observers=[probe])
    for a, b in zip(plain, probed):
        for k in a.history:
            np.testing.assert_array_equal(b.history[k], a.history[k], err_msg=k)
        assert torch.equal(a.W1, b.W1) and torch.equal(a.W2, b.W2)
        assert b.extras["probe_step"].tolist() == [100, 200, 300]
        for k in ("probe_cos", "probe_dist", "probe_residual", "probe_sigma_min"):
            assert b.extras[k].shape == (3,) and np.isfinite(b.extras[k]).all(), k
    # the observer's reading at step 100 is `alignment` on the saved θ_90, θ_100
    r90 = grokfast.train(config.replace(steps=90), backend=backend)
    r100 = grokfast.train(config.replace(steps=100), backend=backend)
    a = alignment(config, data, r90.params, r100.params)
    assert probed[0].extras["probe_cos"][0] == a.cos
    assert probed[0].extras["probe_sigma_min"][0] == a.sigma_min


def test_probe_arguments_are_checked():
    config = Config(p=7, width=16, n_test=5)
    with pytest.raises(GrokfastError, match="lag"):
        AlignmentProbe(config, every=5, lag=10)
    assert AlignmentProbe(config, every=100, lag=10).pause_steps(250) == [90, 100, 190, 200]
    probe = AlignmentProbe(config, every=100, lag=10, at=[15, 30, 150])
    assert probe.probe_steps(250) == [15, 30, 100, 150, 200]
    assert probe.pause_steps(250) == [5, 15, 20, 30, 90, 100, 140, 150, 190, 200]
    assert AlignmentProbe(config, every=None, at=[20, 25], lag=5).pause_steps(100) == [15, 20, 25]
    with pytest.raises(GrokfastError, match="lag"):
        AlignmentProbe(config, every=None, at=[5], lag=10)


def test_probe_at_overlapping_steps_matches_saved_parameters():
    """Probe steps closer than the lag (t − lag of one is another probe step) read the right θ."""
    config = Config(p=7, width=32, n_test=5, steps=40, log_every=10, eval_every=10)
    data = make_dataset(config)
    probe = AlignmentProbe(config, data, every=None, lag=10, at=[20, 25, 30])
    r = grokfast.train(config, backend="reference", observers=[probe])
    assert r.extras["probe_step"].tolist() == [20, 25, 30]
    theta = {s: grokfast.train(config.replace(steps=s), backend="reference").params
             for s in (10, 15, 20, 25, 30)}
    for j, t in enumerate((20, 25, 30)):
        a = alignment(config, data, theta[t - 10], theta[t])
        assert r.extras["probe_cos"][j] == a.cos and r.extras["probe_dist"][j] == a.dist, t
