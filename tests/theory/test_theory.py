"""Eq. 20 against autograd of the reduced cost, the minimum-norm W2, the Euler simulation, the time map."""
import numpy as np
import pytest
import torch
from tolerances import assert_close

from grokfast import Config, make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import activate, init_params
from grokfast.theory import (
    SimResult,
    gd_steps_to_sim_time,
    min_norm_W2,
    predicted_dW1,
    sim_time_to_gd_steps,
    simulate,
)


def problem(encoding="sum", activation="relu", width=64, p=7, seed=0):
    """Training X, Y of a small task and a float64 W1 with width well above n (a well-conditioned Gram)."""
    config = Config(p=p, encoding=encoding, activation=activation, width=width, n_test=None,
                    train_frac=0.7, init="normal", seed=seed)
    data = make_dataset(config)
    W1 = init_params(config)[0].double()
    return config, data.X_train, data.Y_train, W1


def reduced_cost(W1, X, Y, activation, lam):
    """R(W1) = λ‖W1‖² + λ Tr(Yᵀ(HHᵀ + λI)⁻¹Y) = min_W2 ‖H W2 − Y‖² + λ‖W1‖² + λ‖W2‖², H = σ(X W1)."""
    H = activate(activation, X @ W1)
    K = H @ H.T + lam * torch.eye(H.shape[0], dtype=H.dtype)
    return lam * (W1 ** 2).sum() + lam * torch.trace(Y.T @ torch.linalg.solve(K, Y))


@pytest.mark.parametrize("encoding,activation", [("sum", "relu"), ("concat", "quadratic")])
@pytest.mark.parametrize("lam", [1e-1, 1e-3])
def test_ridge_flow_is_minus_gradient_of_reduced_cost(encoding, activation, lam):
    _, X, Y, W1 = problem(encoding, activation)
    W = W1.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reduced_cost(W, X, Y, activation, lam), W)
    assert_close(predicted_dW1(W1, X, Y, activation, lam=lam), -grad / (2 * lam),
                 f"Eq. 20 (λ={lam}) vs −∇R/(2λ)")


def test_reduced_cost_is_the_minimum_over_W2():
    """The R the ridge form differentiates is exactly min over W2 of the regularized loss."""
    _, X, Y, W1 = problem()
    lam = 1e-2
    W2 = min_norm_W2(W1, X, Y, "relu", lam=lam)
    H = torch.relu(X @ W1)
    L = ((H @ W2 - Y) ** 2).sum() + lam * (W1 ** 2).sum() + lam * (W2 ** 2).sum()
    assert_close(L, reduced_cost(W1, X, Y, "relu", lam), "L_λ(W1, W2*) = R(W1)")
    ridge = torch.linalg.solve(H.T @ H + lam * torch.eye(H.shape[1], dtype=H.dtype), H.T @ Y)
    assert_close(W2, ridge, "Hᵀ(HHᵀ+λI)⁻¹Y = (HᵀH+λI)⁻¹HᵀY")


def test_limit_flow_is_minus_half_gradient_of_trace_cost():
    """λ → 0: Eq. 20 = −½∇(‖W1‖² + Tr(Yᵀ(HHᵀ)⁻¹Y)) (R/λ at λ = 0), exactly."""
    _, X, Y, W1 = problem()
    W = W1.clone().requires_grad_(True)
    H = torch.relu(X @ W)
    cost = (W ** 2).sum() + torch.trace(Y.T @ torch.linalg.solve(H @ H.T, Y))
    (grad,) = torch.autograd.grad(cost, W)
    assert_close(predicted_dW1(W1, X, Y, "relu"), -grad / 2, "Eq. 20 (λ → 0)")


def test_ridge_flow_converges_to_the_limit_linearly():
    _, X, Y, W1 = problem()
    limit = predicted_dW1(W1, X, Y, "relu")
    err = {lam: float((predicted_dW1(W1, X, Y, "relu", lam=lam) - limit).norm() / limit.norm())
           for lam in (1e-3, 1e-5, 1e-7)}
    print("relative distance to the λ → 0 flow:", err)
    assert 50 < err[1e-3] / err[1e-5] < 200 and 50 < err[1e-5] / err[1e-7] < 200  # O(λ)
    assert err[1e-7] < 1e-6


def test_min_norm_W2_interpolates_with_minimum_norm():
    _, X, Y, W1 = problem()
    W2 = min_norm_W2(W1, X, Y, "relu")
    H = torch.relu(X @ W1)
    assert_close(H @ W2, Y, "H W2 = Y")
    assert_close(W2, torch.linalg.pinv(H) @ Y, "W2 = H⁺Y")


def test_batched_W1_equals_one_by_one():
    _, X, Y, W1 = problem()
    W1b = torch.stack([W1, problem(seed=1)[3]])
    out = predicted_dW1(W1b, X, Y, "relu")
    for i in range(2):
        assert_close(out[i], predicted_dW1(W1b[i], X, Y, "relu"), f"model {i}")


def test_singular_gram_raises_with_advice():
    _, X, Y, W1 = problem(width=16)                   # width 16 < n = 20
    with pytest.raises(GrokfastError, match="lam > 0"):
        predicted_dW1(W1, X, Y, "relu")
    # below the width limit the ridge form is still defined: it is −∇R / (2λ) (autograd through
    # the explicit-inverse reduced cost), and its W2 the ridge solution. λ = 0.1 keeps HHᵀ + λI,
    # of rank-16 HHᵀ, conditioned well enough for the float64 table (λ = 1e-3: 2e-11 relative)
    lam = 0.1
    W = W1.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reduced_cost(W, X, Y, "relu", lam), W)
    assert_close(predicted_dW1(W1, X, Y, "relu", lam=lam), -grad / (2 * lam), "ridge flow = −∇R/2λ")
    H, Yd = torch.relu(X.double() @ W1), Y.double()
    ridge = torch.linalg.solve(H.T @ H + lam * torch.eye(W1.shape[1], dtype=H.dtype), H.T @ Yd)
    assert_close(min_norm_W2(W1, X, Y, "relu", lam=lam), ridge, "W2 = argmin ‖HW2 − Y‖² + λ‖W2‖²")
    _, X, Y, W1 = problem(width=22)                   # enough units, but 3 of them dead
    W1[:, :3] = -1.0
    with pytest.raises(GrokfastError, match="dead"):
        predicted_dW1(W1, X, Y, "relu")
    with pytest.raises(GrokfastError, match="shapes"):
        predicted_dW1(W1, X[:, :3], Y, "relu")


def test_simulation_euler_step_and_zero_train_loss():
    config = Config.preset("paper-sim", p=11, width=64, steps=40, log_every=10, eval_every=10)
    data = make_dataset(config)
    one = simulate(config, steps=1, log_every=1)
    W1 = one.W1_init[0]
    expected = W1 + config.lr * predicted_dW1(W1, data.X_train, data.Y_train, "relu")
    assert_close(one.W1[0], expected, "one Euler step")

    res = simulate(config, seeds=[0, 3])
    h = res.history
    assert h["step"][0].tolist() == [0, 10, 20, 30, 40]
    print("max train loss over the run:", h["train_loss"].max())
    assert np.all(h["train_acc"] == 1.0)
    assert h["train_loss"].max() < 1e-20         # mean MSE: residual ~1e-10 per output at most
    W2 = min_norm_W2(res.W1[1], data.X_train, data.Y_train, "relu")
    assert_close(res.W2[1], W2, "recorded W2 is the minimum-norm interpolator")
    assert_close(h["norm_W1"][:, 0], res.W1_init.flatten(1).norm(dim=1), "‖W1‖ at init")
    alone = simulate(config, seeds=[3])
    assert_close(alone.W1[0], res.W1[1], "seed 3 alone vs batched")
    for name in ("fourier_ratio", "fourier_angle", "fourier_sim_within", "fourier_sim_across"):
        assert h[name].shape == (2, 5, 5)
        assert np.isfinite(h[name]).all()


def test_simulation_stops_and_keeps_history_when_gram_turns_singular(monkeypatch):
    import grokfast.theory.flow as theory
    config = Config.preset("paper-sim", p=7, width=32, steps=10, log_every=2, eval_every=2)
    real_factor, calls = theory._gram_factor, []

    def failing(H, lam):
        calls.append(1)
        if len(calls) == 6:                       # the flow at step 5
            raise GrokfastError("HHᵀ + λI is singular (test)")
        return real_factor(H, lam)

    monkeypatch.setattr(theory, "_gram_factor", failing)
    with pytest.warns(UserWarning, match="stopped at step 5"):
        res = simulate(config)
    assert res.history["step"][0].tolist() == [0, 2, 4]
    assert "step 5" in res.meta["stopped"]


def test_simulation_result_round_trip(tmp_path):
    config = Config.preset("paper-sim", p=7, width=32, steps=4, log_every=2, eval_every=2)
    res = simulate(config, seeds=[0, 1])
    back = SimResult.load(res.save(tmp_path / "sim"))
    assert back.seeds == [0, 1] and back.config == res.config
    for k in res.history:
        np.testing.assert_array_equal(back.history[k], res.history[k])
    assert torch.equal(back.W1, res.W1) and torch.equal(back.W2, res.W2)
    with pytest.raises(GrokfastError, match="not a simulation directory"):
        SimResult.load(tmp_path)


def test_simulation_rejects_too_narrow_width_at_lambda_zero():
    config = Config.preset("paper-sim", p=11, width=32, steps=2)   # n = 46 > width
    with pytest.raises(GrokfastError, match="lam > 0"):
        simulate(config)
    res = simulate(config, lam=1e-3)
    data = make_dataset(config)
    # the recorded W2 is the ridge solution for the final W1, and one Euler step is η·(Eq. 20, ridge)
    assert_close(res.W2[0], min_norm_W2(res.W1[0], data.X_train, data.Y_train, "relu", lam=1e-3),
                 "W2 at the end: ridge solution")
    step = res.W1_init[0] + config.lr * predicted_dW1(res.W1_init[0], data.X_train, data.Y_train,
                                                       "relu", lam=1e-3)
    assert_close(simulate(config, steps=1, lam=1e-3).W1[0], step, "one Euler step")
    assert np.isfinite(res.history["test_acc"]).all() and res.history["train_loss"].min() > 0


def test_time_map():
    # paper-real: GD lr 1, weight_decay 1e-4 (λ = 5e-5): one unit of time is 1/(2λη) = 10⁴ steps
    assert sim_time_to_gd_steps(1.0, lr=1.0, weight_decay=1e-4) == pytest.approx(1e4, rel=1e-15)
    t = np.array([0.5, 2.0, 3.1])
    np.testing.assert_allclose(gd_steps_to_sim_time(sim_time_to_gd_steps(t, 0.5, 2e-4), 0.5, 2e-4),
                               t, rtol=1e-15)
    with pytest.raises(GrokfastError, match="weight_decay"):
        sim_time_to_gd_steps(1.0, lr=1.0, weight_decay=0.0)
