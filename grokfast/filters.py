"""Drop-in Grokfast gradient filters (Lee et al. 2024) and ⊥Grad (Prieto et al. 2025) for any nn.Module.

Call a filter between ``loss.backward()`` and ``optimizer.step()``; it rewrites each parameter's
``.grad`` and returns its state, which you pass back in as ``grads`` on the next call::

    grads = None
    for batch in data:
        loss = model(batch).backward()
        grads = gradfilter_ema(model, grads=grads, alpha=0.98, lamb=2.0)
        optimizer.step(); optimizer.zero_grad()

Same signatures, defaults and floating-point operation order as the published `grokfast.py`.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, Optional

import torch
from torch import nn


def _trainable(m: nn.Module):
    return [(n, p) for n, p in m.named_parameters() if p.requires_grad and p.grad is not None]


@torch.no_grad()
def gradfilter_ema(m: nn.Module, grads: Optional[Dict[str, torch.Tensor]] = None,
                   alpha: float = 0.98, lamb: float = 2.0) -> Dict[str, torch.Tensor]:
    """Grokfast-EMA: μ ← α·μ + (1 − α)·g (μ starts at g), then g ← g + λ·μ. Returns μ per name."""
    if grads is None:
        grads = {n: p.grad.detach().clone() for n, p in _trainable(m)}
    for n, p in _trainable(m):
        grads[n] = grads[n] * alpha + p.grad.detach() * (1 - alpha)
        p.grad = p.grad + grads[n] * lamb
    return grads


@torch.no_grad()
def gradfilter_ma(m: nn.Module, grads: Optional[Dict[str, deque]] = None, window_size: int = 100,
                  lamb: float = 5.0, filter_type: str = "mean", warmup: bool = True,
                  trigger: bool = False) -> Dict[str, deque]:
    """Grokfast-MA: push g into a window of the last `window_size` gradients; once the window is
    full (or always, if not warmup) and not trigger: g ← g + λ·mean(window) (or sum)."""
    if filter_type not in ("mean", "sum"):
        raise ValueError(f"filter_type={filter_type!r}: use 'mean' or 'sum'")
    if grads is None:
        grads = {n: deque(maxlen=window_size) for n, _ in _trainable(m)}
    for n, p in _trainable(m):
        grads[n].append(p.grad.detach().clone())
        if not warmup or len(grads[n]) == window_size and not trigger:
            total = sum(grads[n])  # left to right from the oldest, as Python's sum
            avg = total / len(grads[n]) if filter_type == "mean" else total
            p.grad = p.grad + avg * lamb
    return grads


@torch.no_grad()
def orthograd_(m: nn.Module, eps: float = 1e-30) -> None:
    """⊥Grad in place, per parameter: g⊥ = g − (⟨w, g⟩ / (⟨w, w⟩ + ε))·w, rescaled to ‖g‖."""
    for _, p in _trainable(m):
        w, g = p.detach().reshape(-1), p.grad.reshape(-1)
        proj = torch.dot(w, g) / (torch.dot(w, w) + eps)
        g_orth = g - proj * w
        scale = g.norm(2) / (g_orth.norm(2) + eps)
        p.grad = (g_orth * scale).reshape(p.shape)
