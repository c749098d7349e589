"""The torch backend's Grokfast gradient filters on M models at once: none, EMA and MA, each owning
its state ([M, S] like θ; the MA window [W, M, S]), its per-model call count and its state dict.

Same operation order as the published functions (grokfast.filters), with per-model α and λ as
[M, 1] tensors (grokfast.optim.per_model). A filter rewrites the gradient G in place.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from grokfast.config import Config

from .optim import ModelRows, per_model, start_rows


class NoFilter(ModelRows):
    """grad_filter="none": G unchanged, no state (not even a count in the state dict)."""

    def __init__(self, M: int):
        self.M = M

    def apply(self, G: torch.Tensor, offset: int) -> None:
        pass

    def finish(self, done: int) -> None:
        pass

    def snapshot(self, rows: torch.Tensor) -> dict:
        return {}

    def restore(self, snap: dict, rows: torch.Tensor, frozen: np.ndarray, n_steps: int) -> None:
        pass

    def state_dict(self, P: int) -> dict:
        return {}

    def load_state_dict(self, state: dict, P: int) -> None:
        pass


class EMAFilter(ModelRows):
    """Grokfast EMA (filters.gradfilter_ema): μ ← μ·α + g·(1 − α), μ starting at g; g ← g + μ·λ."""

    counter = "filter_count"
    names = ("ema",)

    def __init__(self, configs: Sequence[Config], grad: torch.Tensor, tmp: torch.Tensor):
        super().__init__(len(configs))
        dt, dev = grad.dtype, grad.device
        self.tmp = tmp
        self.filter_alpha = per_model([ci.filter_alpha for ci in configs], dt, dev)
        self.filter_one_minus_alpha = per_model([1 - ci.filter_alpha for ci in configs], dt, dev)
        self.filter_lamb = per_model([ci.filter_lamb for ci in configs], dt, dev)
        self.ema = torch.zeros_like(grad)

    def apply(self, G: torch.Tensor, offset: int) -> None:
        """Filter G in place; `offset`: steps of the chunk done before this one."""
        ema = self.ema
        start_rows(ema, G, self.filter_count + offset == 0)
        ema.mul_(self.filter_alpha).add_(torch.mul(G, self.filter_one_minus_alpha, out=self.tmp))
        G.add_(torch.mul(ema, self.filter_lamb, out=self.tmp))


class MAFilter(ModelRows):
    """Grokfast MA (filters.gradfilter_ma): push g; once the window is full (or always without
    warmup) g ← g + λ·(mean or sum of the window), summed left to right from the oldest.

    The window is a ring [W, M, S] of the last W raw gradients, slot `ring_pos` the oldest; unfilled
    slots are 0, so summing all slots from the oldest equals the reference's sum. Its state dict
    holds the window oldest first, [M, W, P] ("ma_window"), whatever the ring's position."""

    counter = "filter_count"
    names = ("ring",)
    model_dim = 1

    def __init__(self, configs: Sequence[Config], grad: torch.Tensor, tmp: torch.Tensor):
        super().__init__(len(configs))
        c = configs[0]
        self.tmp, self.dtype, self.device = tmp, grad.dtype, grad.device
        self.filter_lamb = per_model([ci.filter_lamb for ci in configs], grad.dtype, grad.device)
        self.window, self.warmup, self.mean = c.filter_window, c.filter_warmup, c.filter_type == "mean"
        self.ring = torch.zeros(c.filter_window, *grad.shape, dtype=grad.dtype, device=grad.device)
        self.ring_pos = 0
        self.ma_total = torch.zeros_like(grad)

    def apply(self, G: torch.Tensor, offset: int) -> None:
        """Filter G in place; `offset`: steps of the chunk done before this one."""
        W = self.window
        self.ring[self.ring_pos].copy_(G)
        self.ring_pos = pos = (self.ring_pos + 1) % W
        count = np.minimum(self.filter_count + offset + 1, W)        # window length per model
        apply = count == W if self.warmup else np.ones(self.M, bool)
        if not apply.any():
            return
        total = self.ma_total
        total.copy_(self.ring[pos])
        for j in range(1, W):
            total.add_(self.ring[(pos + j) % W])
        if self.mean:
            total.div_(per_model(count.astype(np.float64).tolist(), self.dtype, self.device))
        update = torch.mul(total, self.filter_lamb, out=self.tmp)
        if apply.all():
            G.add_(update)
        else:
            mask = torch.from_numpy(apply).to(self.device)[:, None]
            G.copy_(torch.where(mask, G + update, G))

    def restore(self, snap: dict, rows: torch.Tensor, frozen: np.ndarray, n_steps: int) -> None:
        # the ring advanced n_steps slots: rotate the frozen windows to keep their order
        snap = {**snap, "ring": snap["ring"].roll(n_steps % self.window, dims=0)}
        super().restore(snap, rows, frozen, n_steps)

    def state_dict(self, P: int) -> dict:
        state = super().state_dict(P)
        ring = state.pop("ring").roll(-self.ring_pos, dims=0)        # oldest first
        state["ma_window"] = ring.transpose(0, 1).contiguous()        # [M, W, P]
        return state

    def load_state_dict(self, state: dict, P: int) -> None:
        state = {**state, "ring": state["ma_window"].transpose(0, 1)}
        super().load_state_dict(state, P)
        self.ring_pos = 0


def make_filter(configs: Sequence[Config], grad: torch.Tensor, tmp: torch.Tensor) -> ModelRows:
    """The gradient filter of a batch (configs share grad_filter) for gradients like `grad`
    [M, S]; tmp: [M, S] scratch it may overwrite."""
    kind = configs[0].grad_filter
    if kind == "none":
        return NoFilter(len(configs))
    return (EMAFilter if kind == "ema" else MAFilter)(list(configs), grad, tmp)
