"""The drop-in Grokfast filters and ⊥Grad against their published formulas, bitwise."""
import pytest
import torch
from torch import nn

from grokfast import gradfilter_ema, gradfilter_ma
from grokfast.filters import orthograd_


def _model_with_grads(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    m[2].bias.requires_grad_(False)  # frozen parameters are left alone
    m(torch.randn(4, 5)).pow(2).sum().backward()
    return m


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_ema_first_call_and_later_calls():
    m = _model_with_grads(0)
    g0 = _grads(m)
    state = gradfilter_ema(m, alpha=0.9, lamb=2.0)
    for n, p in m.named_parameters():
        if n not in g0:
            assert p.grad is None
            continue
        mu = g0[n] * 0.9 + g0[n] * (1 - 0.9)  # first call: μ ← g, then the EMA update
        assert torch.equal(state[n], mu)
        assert torch.equal(p.grad, g0[n] + mu * 2.0)
    m.zero_grad()
    m(torch.randn(4, 5)).pow(2).sum().backward()
    g1 = _grads(m)
    mu0 = {n: v.clone() for n, v in state.items()}
    state = gradfilter_ema(m, grads=state, alpha=0.9, lamb=2.0)
    for n in g1:
        mu = mu0[n] * 0.9 + g1[n] * (1 - 0.9)
        assert torch.equal(state[n], mu)
        assert torch.equal(dict(m.named_parameters())[n].grad, g1[n] + mu * 2.0)


@pytest.mark.parametrize("filter_type", ["mean", "sum"])
@pytest.mark.parametrize("warmup", [True, False])
def test_ma_window_warmup_and_type(filter_type, warmup):
    w, lamb = 3, 5.0
    state, history = None, []
    gen = torch.Generator().manual_seed(1)
    m = nn.Linear(4, 2)
    for t in range(6):
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        raw = {n: p.grad.clone() for n, p in m.named_parameters()}
        history.append(raw)
        state = gradfilter_ma(m, grads=state, window_size=w, lamb=lamb, filter_type=filter_type,
                              warmup=warmup)
        window = history[-w:]
        applies = (not warmup) or len(window) == w
        for n, p in m.named_parameters():
            if applies:
                total = sum(h[n] for h in window)
                avg = total / len(window) if filter_type == "mean" else total
                assert torch.equal(p.grad, raw[n] + avg * lamb), (t, n)
            else:
                assert torch.equal(p.grad, raw[n]), (t, n)
            assert len(state[n]) == min(t + 1, w)


def test_ma_trigger_suppresses_the_filter():
    m = nn.Linear(3, 2)
    state = None
    for t in range(4):
        for p in m.parameters():
            p.grad = torch.full(p.shape, float(t + 1))
        state = gradfilter_ma(m, grads=state, window_size=2, trigger=True)
        for p in m.parameters():
            assert torch.equal(p.grad, torch.full(p.shape, float(t + 1)))


def test_orthograd_is_orthogonal_and_keeps_the_norm():
    torch.manual_seed(3)
    m = nn.Linear(6, 4, dtype=torch.float64)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    orthograd_(m)
    for n, p in m.named_parameters():
        assert abs(float((p.detach() * p.grad).sum())) < 1e-12
        assert float(p.grad.norm()) == pytest.approx(float(before[n].norm()), rel=1e-12)
