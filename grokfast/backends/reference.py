"""The reference implementation: plain autograd and torch.optim, one model at a time, full batch.

Every other backend is tested against this module, and it is the loop a researcher would write:

    logits = model(X)                       # Ŷ = σ(X W1) W2 with dense one-hot inputs X
    loss = data_loss(logits, y)             # L, no weight decay
    loss.backward()                         # ∇L in .grad
    gradfilter_ema / gradfilter_ma          # Grokfast, exactly the published functions
    orthograd_                              # ⊥Grad, before the base step
    optimizer.step()                        # torch.optim; weight decay in its own convention
    θ ← θ · ‖θ_0‖ / ‖θ‖                     # fixed_norm only

Statistics (model.STAT_NAMES) are computed directly at every recorded step s (s % log_every == 0):
the data-loss gradient is copied before the filters touch it, and θ_s before the update.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.filters import gradfilter_ema, gradfilter_ma, orthograd_
from grokfast.model import (
    STAT_NAMES,
    accuracy,
    activate,
    cosine,
    data_loss,
    init_params,
    min_margin,
    step_lr,
)
from grokfast.profiling import nvtx_range


class TwoLayerNet(nn.Module):
    """Ŷ = σ(X W1) W2, no biases; W1 [d_in, width], W2 [width, p]."""

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor, activation: str):
        super().__init__()
        self.W1 = nn.Parameter(W1.clone())
        self.W2 = nn.Parameter(W2.clone())
        self.activation = activation

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, X @ self.W1) @ self.W2


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    if config.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=config.betas, eps=config.eps,
               weight_decay=config.weight_decay)


class _Run:
    """One model's state: module, optimizer, filter state, data on the device."""

    def __init__(self, config: Config, data: Dataset, device: torch.device):
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.config = config
        W1, W2 = init_params(config)
        self.model = TwoLayerNet(W1, W2, config.activation).to(device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.filter_state = None
        self.target_norm = math.sqrt(float(W1.double().pow(2).sum() + W2.double().pow(2).sum()))
        self.X = data.X_train.to(device=device, dtype=dtype)
        self.y = data.train_labels.to(device)
        self.X_test = data.X_test.to(device=device, dtype=dtype)
        self.y_test = data.test_labels.to(device)

    def step(self, s: int) -> dict | None:
        c, model = self.config, self.model
        record = s % c.log_every == 0
        self.optimizer.zero_grad(set_to_none=True)
        with nvtx_range("forward"):
            logits = model(self.X)
            loss = data_loss(logits, self.y, c)
        with nvtx_range("backward"):
            loss.backward()
        if record:
            with nvtx_range("statistics"):
                stats = self._stats_before(s, logits.detach(), loss.detach())
                theta = [model.W1.detach().clone(), model.W2.detach().clone()]
        with nvtx_range("update"):
            if c.grad_filter == "ema":
                self.filter_state = gradfilter_ema(model, self.filter_state, c.filter_alpha,
                                                   c.filter_lamb)
            elif c.grad_filter == "ma":
                self.filter_state = gradfilter_ma(model, self.filter_state, c.filter_window,
                                                  c.filter_lamb, c.filter_type, c.filter_warmup)
            if c.orthograd:
                orthograd_(model)
            for group in self.optimizer.param_groups:
                group["lr"] = step_lr(c, s)
            self.optimizer.step()
            if c.fixed_norm:
                with torch.no_grad():
                    norm = torch.sqrt(model.W1.pow(2).sum() + model.W2.pow(2).sum())
                    scale = self.target_norm / norm
                    model.W1.mul_(scale)
                    model.W2.mul_(scale)
        if not record:
            return None
        with nvtx_range("statistics"):
            d1, d2 = model.W1.detach() - theta[0], model.W2.detach() - theta[1]
            upd = torch.sqrt(d1.pow(2).sum() + d2.pow(2).sum())
            dot = -((d1 * theta[0]).sum() + (d2 * theta[1]).sum())
            stats["update_norm"] = upd
            stats["cos_update"] = cosine(dot, upd, stats["norm"])
            return {k: float(v) for k, v in stats.items()}

    @torch.no_grad()
    def _stats_before(self, s: int, logits, loss) -> dict:
        c, W1, W2 = self.config, self.model.W1, self.model.W2
        g1, g2 = W1.grad, W2.grad
        n1, n2 = W1.norm(), W2.norm()
        gn1, gn2 = g1.norm(), g2.norm()
        dot1, dot2 = (g1 * W1).sum(), (g2 * W2).sum()
        norm, gnorm = torch.sqrt(n1 * n1 + n2 * n2), torch.sqrt(gn1 * gn1 + gn2 * gn2)
        nan = torch.tensor(float("nan"))
        test_loss = test_acc = nan
        if s % c.eval_every == 0:
            test_logits = self.model(self.X_test)
            test_loss = data_loss(test_logits, self.y_test, c)
            test_acc = accuracy(test_logits, self.y_test)
        return dict(step=torch.tensor(s), train_loss=loss, train_acc=accuracy(logits, self.y),
                    test_loss=test_loss, test_acc=test_acc, norm_W1=n1, norm_W2=n2, norm=norm,
                    grad_norm_W1=gn1, grad_norm_W2=gn2, grad_norm=gnorm,
                    cos_grad_W1=cosine(dot1, gn1, n1), cos_grad_W2=cosine(dot2, gn2, n2),
                    cos_grad=cosine(dot1 + dot2, gnorm, norm),
                    min_margin=min_margin(logits, self.y))


class ReferenceStepper:
    """The stepper contract (grokfast.stepper) over the reference loop; models are stepped one by one."""

    backend = "reference"
    preferred_chunk = 1000

    def __init__(self, configs: Sequence[Config], data: Dataset, device: torch.device):
        self.configs = list(configs)
        self.runs = [_Run(c, data, device) for c in self.configs]

    @property
    def n_models(self) -> int:
        return len(self.runs)

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict[str, np.ndarray]:
        """Run updates step0 … step0+n_steps−1 on the models where `active`; return recorded rows."""
        rows: list[list[dict]] = [[] for _ in self.runs]
        for i, run in enumerate(self.runs):
            if not active[i]:
                continue
            for s in range(step0, step0 + n_steps):
                out = run.step(s)
                if out is not None:
                    rows[i].append(out)
        return stack_rows(rows, step0, n_steps, self.configs[0].log_every)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([r.model.W1.detach().cpu() for r in self.runs]),
                torch.stack([r.model.W2.detach().cpu() for r in self.runs]))

    def state_dict(self) -> dict:
        return {"runs": [{"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
                          "filter_state": r.filter_state} for r in self.runs]}

    def load_state_dict(self, state: dict) -> None:
        for r, st in zip(self.runs, state["runs"]):
            r.model.load_state_dict(st["model"])
            r.optimizer.load_state_dict(st["optimizer"])
            r.filter_state = st["filter_state"]


def stack_rows(rows: list[list[dict]], step0: int, n_steps: int, log_every: int) -> dict:
    """Per-model lists of stat dicts → name → [M, n_rows] float64, NaN for models not stepped."""
    steps = [s for s in range(step0, step0 + n_steps) if s % log_every == 0]
    out = {k: np.full((len(rows), len(steps)), np.nan) for k in STAT_NAMES}
    for i, model_rows in enumerate(rows):
        for j, r in enumerate(model_rows):
            for k in STAT_NAMES:
                out[k][i, j] = r[k]
    out["step"][:] = np.asarray(steps, dtype=np.float64)
    return out
