"""kernels/update.py against torch: gradients (segmented sum, summed shares), partial sums, the Grokfast
filters (grokfast.filters), ⊥Grad, every torch.optim update and the fixed-norm rescale. In the CPU
interpreter here, on the GPU where CUDA is available (the `launch` fixture).

Single launches on random inputs, outputs filled with NaN. Small tiles (6 W1 tiles + 2 W2 tiles,
2 + 2 flat tiles, 2 blocks of samples) so every per-layer total crosses tiles. Model 1 of 2 is
inactive: nothing of it may be written.
"""
import collections

import pytest
import torch
from grokfast.kernels.triton import common
from grokfast.kernels.triton import launch as klaunch
from grokfast.kernels.triton.update import (
    UpdatePlan,
    update_grad,
    update_orth,
    update_rescale,
    update_step,
)
from tolerances import assert_close
from variants import FILTER_VARIANTS, OPTIMIZER_VARIANTS

from grokfast import Config, make_dataset
from grokfast.backends.reference import TwoLayerNet, make_optimizer, step_lr
from grokfast.backends.triton.stepper import _hyperparameters, segment_table
from grokfast.filters import gradfilter_ema, gradfilter_ma, orthograd_

NAN = float("nan")
Q = {name: int(getattr(common, name)) for name in dir(common) if name.startswith("Q_")}


class Case:
    """Random θ, dZ, dŶ for two models and everything a launch needs, NaN-filled outputs."""

    def __init__(self, dtype="float64", step=3, **changes):
        c = self.c = Config(p=5, width=24, n_test=7, pairs="ordered", dtype=dtype, log_every=1,
                            eval_every=1, **changes)
        d = self.d = make_dataset(c)
        dt = self.dt = getattr(torch, dtype)
        self.spec = klaunch.KernelSpec(
            dtype=getattr(torch, dtype), grad_filter=c.grad_filter, filter_window=c.filter_window,
            filter_mean=c.filter_type == "mean", filter_warmup=c.filter_warmup,
            optimizer=c.optimizer, orthograd=c.orthograd, fixed_norm=c.fixed_norm, block_r=2,
            block_h=16, block_hh=16, block_e=64)
        self.plan = UpdatePlan(self.spec, d_in=c.d_in, width=c.width, p=c.p)
        M, D, n = 2, self.plan.D, len(d.train_labels)
        gen = torch.Generator().manual_seed(9)
        rand = lambda *s: (torch.rand(*s, generator=gen, dtype=torch.float64) * 2 - 1).to(dt)
        self.theta, self.dz = rand(M, D), rand(M, n, c.width)
        self.dw2 = rand(M, 3, c.width, c.p)  # rows.py's per-block shares of ∇W2
        self.state = {k: rand(M, D) for k in ("ema", "buf", "exp_avg")}
        self.state["exp_avg_sq"] = rand(M, D).abs()
        self.state["window"] = rand(M, max(c.filter_window, 1), D)
        if step == 0:  # Adam's moments start at 0, as the stepper allocates them
            self.state["exp_avg"].zero_()
            self.state["exp_avg_sq"].zero_()
        self.new = torch.full((M, D), NAN, dtype=dt)
        self.grad = torch.full((M, D), NAN, dtype=dt)
        self.part = torch.full((M, self.plan.tg, int(common.N_Q)), NAN, dtype=torch.float64)
        target = [1.7, 2.3]
        self.hp = _hyperparameters([c, c], target, 1.0)
        self.step = torch.full((M,), step, dtype=torch.int32)
        self.active = torch.tensor([1, 0], dtype=torch.int32)
        self.s = step
        self.table = segment_table(d.index_train, c.d_in)

    def layers(self, flat):
        d1 = self.plan.D1
        return flat[:d1].reshape(self.c.d_in, self.c.width), flat[d1:].reshape(self.c.width, self.c.p)

    def expected_grad(self):
        """(∇W1, ∇W2) of model 0: Xᵀ dZ with dense X, and the sum of the ∇W2 shares."""
        X = self.d.X_train.to(self.dt)
        return X.T @ self.dz[0], self.dw2[0].sum(0)

    def launch_grad(self, launch):
        launch(update_grad, self.spec, self.plan, self.theta, self.new, self.grad, self.dz,
               self.dw2, self.table, klaunch.State(**self.state), self.part, self.hp, self.step,
               self.active)

    def totals(self, part, t1, q):
        """Per-layer totals of slot q of model 0, [2] float64."""
        v = part[0, :, Q[q]]
        return torch.stack([v[:t1].sum(), v[t1:].sum()])


def _torch_step(case: Case, grads, old_state):
    """θ_{s+1} and the optimizer state after torch.optim's step from the case's state."""
    c, s = case.c, case.s
    params = [w.clone().requires_grad_() for w in case.layers(case.theta[0])]
    opt = make_optimizer(c, params)
    for group in opt.param_groups:
        group["lr"] = step_lr(c, s)
    for p, g, k in zip(params, grads, range(2)):
        p.grad = g.clone()
        if s > 0 and c.optimizer == "sgd":
            opt.state[p]["momentum_buffer"] = case.layers(old_state["buf"][0])[k].clone()
        if s > 0 and c.optimizer in ("adam", "adamw"):
            opt.state[p].update(step=torch.tensor(float(s)),
                                exp_avg=case.layers(old_state["exp_avg"][0])[k].clone(),
                                exp_avg_sq=case.layers(old_state["exp_avg_sq"][0])[k].clone())
    opt.step()
    return [p.detach() for p in params], opt, params


@pytest.mark.parametrize("step", [0, 5])
@pytest.mark.parametrize("name", list(OPTIMIZER_VARIANTS))
def test_gradient_partials_and_optimizer_step(name, step, launch):
    case = Case(step=step, **OPTIMIZER_VARIANTS[name])
    old = {k: v.clone() for k, v in case.state.items()}
    case.launch_grad(launch)
    g1, g2 = case.expected_grad()
    (W1n, W2n), opt, params = _torch_step(case, (g1, g2), old)
    new1, new2 = case.layers(case.new[0])
    assert_close(new1, W1n, "W1 after the step")
    assert_close(new2, W2n, "W2 after the step")
    for name_state, key in (("buf", "momentum_buffer"), ("exp_avg", "exp_avg"),
                            ("exp_avg_sq", "exp_avg_sq")):
        if key in opt.state[params[0]]:
            for k in range(2):
                assert_close(case.layers(case.state[name_state][0])[k], opt.state[params[k]][key], key)
    W1, W2 = case.layers(case.theta[0])
    t1 = case.plan.tg1
    for q, (a, b) in (("Q_THETA2", ((W1 * W1).sum(), (W2 * W2).sum())),
                      ("Q_GRAD2", ((g1 * g1).sum(), (g2 * g2).sum())),
                      ("Q_GRAD_THETA", ((g1 * W1).sum(), (g2 * W2).sum())),
                      ("Q_DELTA2", (((W1n - W1) ** 2).sum(), ((W2n - W2) ** 2).sum())),
                      ("Q_DELTA_THETA", (((W1n - W1) * W1).sum(), ((W2n - W2) * W2).sum()))):
        assert_close((case.totals(case.part, t1, q)), torch.stack([a, b]), q)
    assert torch.isnan(case.new[1]).all() and torch.isnan(case.part[1]).all()


@pytest.mark.parametrize("name", list(FILTER_VARIANTS))
def test_grokfast_filters(name, launch):
    """With ⊥Grad on, the gradient kernel stops after the filter and stores g_f: compare it with
    grokfast.filters on a module whose state is the kernel's state."""
    step, changes = FILTER_VARIANTS[name]
    case = Case(step=step, orthograd=True, dtype="float32", **changes)
    c = case.c
    g1, g2 = case.expected_grad()
    net = TwoLayerNet(*case.layers(case.theta[0]), c.activation)
    net.W1.grad, net.W2.grad = g1.clone(), g2.clone()
    if c.grad_filter == "ema":
        state = None if step == 0 else dict(zip(("W1", "W2"), case.layers(case.state["ema"][0].clone())))
        state = gradfilter_ema(net, state, c.filter_alpha, c.filter_lamb)
    else:
        w = c.filter_window
        state = {}
        for k, name_k in enumerate(("W1", "W2")):  # the window holds steps max(0, s−w+1) … s−1
            older = [case.layers(case.state["window"][0, t % w])[k].clone()
                     for t in range(max(0, step - w + 1), step)]
            state[name_k] = collections.deque(older, maxlen=w)
        state = gradfilter_ma(net, state, w, c.filter_lamb, c.filter_type, c.filter_warmup)
    case.launch_grad(launch)
    f1, f2 = case.layers(case.grad[0])
    assert_close(f1, net.W1.grad, "filtered ∇W1")
    assert_close(f2, net.W2.grad, "filtered ∇W2")
    if c.grad_filter == "ema":
        assert_close(case.state["ema"][0], torch.cat([state["W1"].reshape(-1), state["W2"].reshape(-1)]),
                     "μ")
    else:
        slot = step % c.filter_window
        assert_close(case.state["window"][0, slot], torch.cat([g1.reshape(-1), g2.reshape(-1)]), "pushed g")
    t1 = case.plan.tg1
    assert_close((case.totals(case.part, t1, "Q_FILT2")),
                 torch.stack([(f1 * f1).sum(), (f2 * f2).sum()]), "Σg_f²", dtype=torch.float32)


@pytest.mark.parametrize("fixed_norm", [False, True])
def test_orthograd_step_and_fixed_norm(fixed_norm, launch):
    """update_grad → update_orth → update_step (→ update_rescale) equals orthograd_, torch.optim
    and the rescale θ·‖θ_0‖/‖θ‖ of grokfast.reference."""
    case = Case(step=2, orthograd=True, fixed_norm=fixed_norm, optimizer="adam", lr=0.02,
                weight_decay=0.01)
    old = {k: v.clone() for k, v in case.state.items()}
    plan, M = case.plan, 2
    part_o = torch.full((M, plan.te, int(common.N_Q)), NAN, dtype=torch.float64)
    part_s = torch.full_like(part_o, NAN)
    part_n = torch.full_like(part_o, NAN)
    case.launch_grad(launch)
    launch(update_orth, plan, case.theta, case.grad, case.part, part_o, case.active)
    launch(update_step, case.spec, plan, case.theta, case.new, case.grad,
           klaunch.State(**case.state), case.part, part_o, part_s, case.hp, case.step, case.active)
    if fixed_norm:
        launch(update_rescale, case.spec, plan, case.theta, case.new, part_s, part_n, case.hp,
               case.active)

    net = TwoLayerNet(*case.layers(case.theta[0]), "relu")
    net.W1.grad, net.W2.grad = case.expected_grad()
    orthograd_(net)
    (W1n, W2n), _, _ = _torch_step(case, (net.W1.grad, net.W2.grad), old)
    if fixed_norm:
        scale = 1.7 / torch.sqrt(W1n.pow(2).sum() + W2n.pow(2).sum())  # target of model 0
        W1n, W2n = W1n * scale, W2n * scale
    new1, new2 = case.layers(case.new[0])
    assert_close(new1, W1n, "W1")
    assert_close(new2, W2n, "W2")
    last = part_n if fixed_norm else part_s
    W1, W2 = case.layers(case.theta[0])
    assert_close((case.totals(last, plan.te1, "Q_DELTA2")),
                 torch.stack([((W1n - W1) ** 2).sum(), ((W2n - W2) ** 2).sum()]), "Σ Δθ²")
    assert torch.isnan(case.new[1]).all()
