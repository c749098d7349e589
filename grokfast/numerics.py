"""Portable numerics: reductions and the evaluation forward in an order written in the source, so
a run computes the same bits on every x86-64 CPU (config field `numerics="portable"`, the default).

What depends on the CPU otherwise, and what replaces it here (the torch backend and the final
evaluation use these when `numerics="portable"`; `"host"` keeps the host-tuned paths):
- torch's sum / norm / logsumexp reduce in lanes of ATen's vector width: `row_sum`, `total`,
  `logsumexp` sum in the fixed eight-lane order of kernels/cpu/reduce.py (products and exponentials
  are formed first by elementwise torch ops, one rounding each, the same under every ATen
  capability);
- MKL's small GEMMs pick their order by CPU, code path, alignment and threads: `logits` runs the
  numba forward of kernels/cpu/grad.py (Ŷ summed over the hidden units in order, one explicit FMA
  per term: kernels/cpu/fma.py).
Which multiply–adds fuse is decided one by one: the three products and the forward's Ŷ fuse
(explicit llvm.fma, correctly rounded everywhere); the statistics here (norms as Σ x·x, dot products
of ⊥Grad) and the optimizers' updates (kernels/cpu/update.py, backends/torch/optim.py) do not: the
product is rounded first, then added, as torch's separate ops compute it, so the statistics keep
the bits of the unfused torch expressions that the host path and the reference use.
- torch's (and libm's) exp and log are tuned per CPU and not documented to agree: `exp`, `log`
  (and through them `logsumexp`, the losses' and the cross-entropy gradient's) run the float64
  exp / log written in kernels/cpu/elementary.py (float32 through float64, rounded once).
CPU tensors only: on other devices these fall back to torch's own reductions and exp / log.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def available() -> bool:
    """Whether the numba kernels import here (not on a stack without numba, e.g. the GPU machine's,
    where evaluation and norms then take torch's own order: bitwise only on that machine)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def portable(config) -> bool:
    """Whether a config's CPU-side evaluation and norms take the written orders here."""
    return config.numerics == "portable" and available()


def _kernels():
    from grokfast.kernels.cpu import elementary as cpu_elementary
    from grokfast.kernels.cpu import grad as cpu_grad
    from grokfast.kernels.cpu import reduce as cpu_reduce
    return cpu_grad, cpu_reduce, cpu_elementary


def _elementwise(x: torch.Tensor, name: str) -> torch.Tensor:
    """exp or log of x through kernels/cpu/elementary.py (a new contiguous tensor)."""
    src = x.detach().contiguous()
    out = torch.empty_like(src)
    getattr(_kernels()[2], name + "_array")(src.numpy(), out.numpy())
    return out


def exp(x: torch.Tensor) -> torch.Tensor:
    """e^x elementwise, on the CPU in the written float64 exp of kernels/cpu/elementary.py."""
    return _elementwise(x, "exp") if x.device.type == "cpu" else torch.exp(x)


def log(x: torch.Tensor) -> torch.Tensor:
    """log x elementwise, on the CPU in the written float64 log of kernels/cpu/elementary.py."""
    return _elementwise(x, "log") if x.device.type == "cpu" else torch.log(x)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over the last dimension of x [..., C] → [...], in the fixed order of cpu_reduce."""
    if x.device.type != "cpu":
        return x.sum(-1)
    C = x.shape[-1]
    rows = x.detach().reshape(math.prod(x.shape[:-1]), C)
    if rows.stride(-1) != 1 or rows.stride(0) < C:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], dtype=x.dtype)
    _kernels()[1].row_sums(rows.numpy(), out.numpy())
    return out.reshape(x.shape[:-1])


def total(x: torch.Tensor) -> torch.Tensor:
    """Σ of every element of x (a 0-d tensor), in the fixed order of cpu_reduce."""
    return row_sum(x.reshape(1, -1))[0]


def logsumexp(z: torch.Tensor) -> torch.Tensor:
    """log Σ_j exp(z[..., j]) over the last dimension, shifted by the row maximum as torch's
    logsumexp is (rows whose maximum is ±inf are shifted by 0); exp and log those above."""
    m = z.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return log(row_sum(exp(z - m))) + m[..., 0]


def param_norm(W1: torch.Tensor, W2: torch.Tensor, portable: bool) -> float:
    """‖θ‖ in float64 of one model's W1 and W2 (CPU tensors)."""
    a, b = W1.double(), W2.double()
    if portable:
        return float(torch.sqrt(total(a * a) + total(b * b)))
    return float(torch.sqrt(a.pow(2).sum() + b.pow(2).sum()))


def logits(W1: torch.Tensor, W2: torch.Tensor, index: torch.Tensor, activation: str) -> torch.Tensor:
    """σ(W1[i0] + W1[i1]) W2 of one model (CPU, W1 [d_in, width], W2 [width, p]) for samples given
    by their two W1 row indices [n, 2], through the numba forward (kernels/cpu/grad.py): [n, p]."""
    cpu_grad = _kernels()[0]
    d_in, w = W1.shape
    p, n = W2.shape[1], index.shape[0]
    theta = torch.cat([W1.detach().reshape(-1), W2.detach().reshape(-1)])[None].contiguous()
    th = theta.numpy()
    dt = th.dtype
    out = np.zeros((1, n, p), dt)
    i0 = np.ascontiguousarray(index[:, 0].numpy(), dtype=np.int64)
    i1 = np.ascontiguousarray(index[:, 1].numpy(), dtype=np.int64)
    Z, H = np.empty((1, n, w), dt), np.empty((1, n, w), dt)
    cpu_grad.forward_portable(np.zeros(1, np.int64), th, i0, i1, d_in * w,
                              activation != "relu", dt.type(0), Z, H, np.empty((1, p, w), dt),
                              out)
    return torch.from_numpy(out[0])
