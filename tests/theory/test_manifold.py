"""The exact zero-loss-manifold flow: tangent_velocity against a dense projector, its two matrix-free
forms against each other, Eq. 20 as its G → I, N = 0 limit, simulate_manifold's invariants, the time
convention, and the theorem: GD in τ approaches the flow as weight_decay halves."""
import math

import numpy as np
import pytest
import torch
from tolerances import SOLVE_RTOL, assert_close

from grokfast import Config, make_dataset
from grokfast.backends.torch.paths import intra_op_threads
from grokfast.errors import GrokfastError
from grokfast.model import init_params
from grokfast.theory import min_norm_W2, predicted_dW1
from grokfast.theory.manifold import ManifoldPoint, point_velocity, sliding_velocity, tangent_velocity
from grokfast.theory.manifold_sim import ManifoldResult, simulate_manifold
from grokfast.theory.probe import TwoLayerJacobian, tangent_projection, two_layer_functions

@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 solves: one torch thread (two spin against each other on a loaded 2-core machine)."""
    with intra_op_threads(1, torch.device("cpu")):
        yield


CASES = {
    "paper-real": Config.preset("paper-real"),
    "concat-x2": Config(p=7, width=32, n_test=7, encoding="concat", activation="quadratic"),
}


def on_Z(config, seed=0, n_scale=0.5):
    """(data, W1, W2): init W1 of `seed` and W2 = H⁺Y + N with ‖N‖ = n_scale‖H⁺Y‖ (H N = 0): a point
    of Z that is not the decoupled one."""
    config = config.replace(seed=seed)
    data = make_dataset(config)
    W1 = init_params(config)[0].double()
    W2 = min_norm_W2(W1, data.X_train, data.Y_train, config.activation)
    H = torch.relu(data.X_train @ W1) if config.activation == "relu" else (data.X_train @ W1) ** 2
    gen = torch.Generator().manual_seed(seed + 100)
    R = torch.randn(W2.shape, generator=gen, dtype=torch.float64)
    N = R - H.T @ torch.linalg.solve(H @ H.T, H @ R)
    return data, W1, W2 + n_scale * N * (W2.norm() / N.norm())


def dense_velocity(config, data, W1, W2, extra_rows=None):
    """−(I − J⁺J)θ with J = jacrev of the training outputs (rows gathered), least squares by pinv."""
    k, i0, i1 = W1.numel(), data.index_train[:, 0], data.index_train[:, 1]
    act = torch.relu if config.activation == "relu" else torch.square

    def f(th):
        E = th[:k].reshape(W1.shape)
        return (act(E[i0] + E[i1]) @ th[k:].reshape(W2.shape)).reshape(-1)

    theta = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    J = torch.func.jacrev(f)(theta)
    if extra_rows is not None:
        J = torch.cat([J, extra_rows])
    v = -(theta - torch.linalg.pinv(J) @ (J @ theta))
    return v[:k].reshape(W1.shape), v[k:].reshape(W2.shape)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(CASES))
def test_tangent_velocity_matches_dense_projection(name):
    """Each form (gram, w1, cg) against −(I − J⁺J)θ with J from jacrev (one dense J per case)."""
    config = CASES[name]
    data, W1, W2 = on_Z(config)
    ref = torch.cat([t.reshape(-1) for t in dense_velocity(config, data, W1, W2)])
    for method in ("gram", "w1", "cg"):
        dW1, dW2 = tangent_velocity(config, data, W1, W2, method=method)
        err = rel(torch.cat([dW1.reshape(-1), dW2.reshape(-1)]), ref)
        print(f"{name} {method}: relative error {err:.2e}")
        assert err < SOLVE_RTOL, method


def test_kink_constrained_velocity_matches_dense_projection():
    """Held kinks add the rows ∂z_ih/∂θ = (X_i ⊗ e_h, 0) to J."""
    config = CASES["paper-real"]
    data, W1, W2 = on_Z(config)
    gen = torch.Generator().manual_seed(3)
    kinks = torch.rand(data.X_train.shape[0], config.width, generator=gen) < 0.02
    rows = []
    for i, h in kinks.nonzero().tolist():
        r = torch.zeros(W1.shape, dtype=torch.float64)
        r[:, h] = data.X_train[i]
        rows.append(torch.cat([r.reshape(-1), torch.zeros(W2.numel(), dtype=torch.float64)]))
    ref1, ref2 = dense_velocity(config, data, W1, W2, torch.stack(rows))
    for method in ("gram", "w1"):
        dW1, dW2 = tangent_velocity(config, data, W1, W2, kinks=kinks, method=method)
        assert rel(dW1, ref1) < SOLVE_RTOL and rel(dW2, ref2) < SOLVE_RTOL, method
    assert float((data.X_train @ dW1)[kinks].abs().max()) < 1e-12 * float(dW1.norm())


def test_w1_and_cg_forms_agree_batched_and_off_Z():
    config = CASES["paper-real"]
    pts = [on_Z(config, seed=s) for s in range(2)]
    data = pts[0][0]
    W1 = torch.stack([p[1] for p in pts])
    W2 = torch.stack([p[2] for p in pts]) * 1.1            # off Z: J is still defined there
    a1, a2 = tangent_velocity(config, data, W1, W2, method="w1")
    b1, b2 = tangent_velocity(config, data, W1, W2, method="cg")
    for i in range(2):
        assert rel(a1[i], b1[i]) < SOLVE_RTOL and rel(a2[i], b2[i]) < SOLVE_RTOL
        one = tangent_velocity(config, data, W1[i], W2[i], method="w1")
        assert torch.equal(one[0], a1[i]) and torch.equal(one[1], a2[i])


@pytest.mark.parametrize("name", list(CASES))
def test_eq20_is_the_flow_with_identity_metric_and_no_N(name):
    """At W2 = H⁺Y the W1 form with G replaced by I is −W1 + M*(AY) = Eq. 20's dW1/dt."""
    config = CASES[name]
    data, W1, _ = on_Z(config)
    X, Y = data.X_train.double(), data.Y_train.double()
    W2 = min_norm_W2(W1, X, Y, config.activation)
    pt = ManifoldPoint(W1, W2, X, Y, config.activation)
    assert_close(pt.Mt(pt.A(pt.F)) - W1, predicted_dW1(W1, X, Y, config.activation), "Eq. 20")
    dW1, _ = tangent_velocity(config, data, W1, W2)                 # the exact flow differs (G ≠ I)
    assert rel(dW1, predicted_dW1(W1, X, Y, config.activation)) > 1e-3


def test_pure_decay_pins_the_time_convention():
    """All hidden units dead (X ≥ 0, W1 ≤ 0): J = 0, the flow is dθ/dτ = −θ exactly, and GD with
    torch's weight decay (grad += wd·θ, lr η) gives θ (1 − wd·η)^steps → θ e^{−τ}, τ = wd·η·steps."""
    config = CASES["paper-real"].replace(weight_decay=1e-3, lr=1.0)
    data = make_dataset(config)
    W1, W2 = (t.double() for t in init_params(config))
    W1 = -W1.abs()
    theta = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    v, _ = tangent_projection(TwoLayerJacobian(W1, W2, data.X_train, "relu"), -theta)   # HHᵀ = 0
    assert torch.equal(v, -theta)
    _, grad_fn, _ = two_layer_functions(config, data)
    th, steps = theta.clone(), 500
    for _ in range(steps):
        th = th - config.lr * (grad_fn(th) + config.weight_decay * th)
    tau = config.weight_decay * config.lr * steps
    assert abs(float(th.norm() / theta.norm()) - math.exp(-tau)) < tau * config.weight_decay


def test_simulate_manifold_stays_on_Z_and_keeps_the_norm_identity():
    config = CASES["paper-real"]
    data, W1, W2 = on_Z(config)
    res = simulate_manifold(config, W1, W2, data=data, tau_max=0.1, record_every=0.05)
    h = res.history
    print({k: h[k][0].tolist() for k in ("norm", "identity_error", "n_sliding", "n_crossing",
                                         "h_min_used", "rejected", "forced")})
    assert float(h["train_loss"].max()) < 1e-20
    assert float(h["identity_error"][0, 1:].max()) <= 0.01 and float(h["forced"].sum()) == 0
    assert (h["norm"][0, 1:] < h["norm"][0, :-1]).all()             # the flow lowers ‖θ‖
    res_n0 = simulate_manifold(config, W1, W2, data=data, tau_max=0.05, record_every=0.05,
                               reset_W2=True)
    assert float(res_n0.history["norm_N"].max()) < 1e-10 * float(res_n0.history["norm_W2"].max())


def test_manifold_result_round_trip(tmp_path):
    config = CASES["concat-x2"]
    data, W1, W2 = on_Z(config)
    res = simulate_manifold(config, W1, W2, data=data, tau_max=0.1, record_every=0.05)
    back = ManifoldResult.load(res.save(tmp_path / "m"))
    assert back.grok_tau() == res.grok_tau() and torch.equal(back.W1, res.W1)
    for k, v in res.history.items():
        assert np.array_equal(back.history[k], v, equal_nan=True), k


def test_bad_input_is_a_grokfast_error():
    config = CASES["paper-real"]
    data, W1, W2 = on_Z(config)
    with pytest.raises(GrokfastError, match="need W1"):
        tangent_velocity(config, data, W1[:, :5], W2)
    with pytest.raises(GrokfastError, match="method"):
        point_velocity(ManifoldPoint(W1, W2, data.X_train, data.Y_train, "relu"), "dense")
    with pytest.raises(GrokfastError, match="tau_max"):
        simulate_manifold(config, W1, W2, tau_max=0)


def gd_in_tau(config, data, W1, W2, weight_decay, tau):
    """GD θ ← θ − lr(∇L + wd·θ) (config's loss and reduction) for tau / (wd·lr) steps."""
    _, grad_fn, _ = two_layer_functions(config, data)
    th = torch.cat([W1.reshape(-1), W2.reshape(-1)])
    for _ in range(round(tau / (weight_decay * config.lr))):
        th = th - config.lr * (grad_fn(th) + weight_decay * th)
    return th


def test_gd_approaches_the_flow_as_weight_decay_halves():
    """The theorem, numerically, on the smooth x² net (no kinks), sum-reduced MSE: at weight decay
    wd ≪ 2σ_min(J)² (≈ 0.6 here) and lr below GD's stability limit 1/σ_max(J)² (≈ 6e-3), GD run
    for τ = 0.02 (500 … 4 000 steps) ends within ‖θ_GD − θ_flow‖ ∝ wd of the exact flow (GD's
    O(λ) offset from Z and its O(λ) lag): measured halving per halving of wd (ratios 2.00 ± 0.01)."""
    config = Config(p=5, width=24, n_test=3, activation="quadratic", lr=0.005, loss_reduction="sum")
    data, W1, W2 = on_Z(config, n_scale=0.3)
    tau = 0.02
    flow = simulate_manifold(config, W1, W2, data=data, tau_max=tau, record_every=tau,
                             h0=1e-3, h_max=1e-3, h_min=1e-3, rtol=1e-2)
    th_flow = torch.cat([flow.W1[0].reshape(-1), flow.W2[0].reshape(-1)])
    dists = [float((gd_in_tau(config, data, W1, W2, wd, tau) - th_flow).norm())
             for wd in (8e-3, 4e-3, 2e-3, 1e-3)]
    ratios = [a / b for a, b in zip(dists, dists[1:])]
    print("distance per halving:", dists, "ratios:", ratios)
    assert all(1.8 < r < 2.2 for r in ratios)


def test_models_integrated_in_parallel_are_bitwise_the_sequential_ones():
    """workers=2 runs two models at a time in threads: each model's numbers stay its own."""
    config = CASES["paper-real"]
    pts = [on_Z(config, seed=s) for s in range(2)]
    W1, W2 = torch.stack([p[1] for p in pts]), torch.stack([p[2] for p in pts])
    one, two = (simulate_manifold(config, W1, W2, data=pts[0][0], tau_max=0.05, record_every=0.05,
                                  workers=w) for w in (1, 2))
    assert torch.equal(one.W1, two.W1) and torch.equal(one.W2, two.W2)
    for k, v in one.history.items():
        assert np.array_equal(two.history[k], v, equal_nan=True), k


def test_sliding_set_is_a_fixed_point():
    """sliding_velocity's held set: no pair left that its velocity carries across within h while
    the other side's carries it back, and the held pairs' pre-activations do not move."""
    config = CASES["paper-real"]
    data, W1, W2 = on_Z(config)
    pt = ManifoldPoint(W1, W2, data.X_train.double(), data.Y_train.double(), "relu")
    h = 0.05
    dW1, _, info, held_pt = sliding_velocity(pt, h)
    print(info)
    assert info["n_sliding"] > 0 and info["sliding_rounds"] < 8
    held = held_pt.kinks
    dZ = pt.X @ dW1
    assert float(dZ[held].abs().max()) < 1e-12 * float(dZ.abs().max())
    cross = ((pt.Z > 0) != (pt.Z + h * dZ > 0)) & ~held
    o1, _, _ = point_velocity(held_pt.with_sides(cross))
    assert not bool((cross & ((pt.X @ o1) * pt.Z > 0)).any())
