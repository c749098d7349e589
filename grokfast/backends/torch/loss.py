"""The torch backend's loss gradient ∂L/∂Ŷ for M models at once, formed in the operation order in
which autograd forms it from the reference's loss (grokfast.model.data_loss); with portable numerics
the sums over classes (logsumexp, stablemax's Σ s) run in the written order of grokfast.numerics and
exp / log are its written ones (on the CPU the gradient is kernels/cpu/loop_loss.py's, the same
operations in numba, shared with the native chunk loop)."""
from __future__ import annotations

import numpy as np
import torch

from grokfast.config import Config
from grokfast.model import stablemax_s
from grokfast.numerics import exp, logsumexp, row_sum


class LossGrad:
    """∂L/∂Ŷ of the batch's loss (shared: loss, loss_reduction, loss_dtype) into `out` [M, N, p]
    (working dtype), for training labels [N]; cross-entropy and stablemax in float64 when
    loss_dtype says so."""

    def __init__(self, c: Config, labels: torch.Tensor, out: torch.Tensor, portable: bool = False):
        M, N, p = out.shape
        dt, dev = out.dtype, out.device
        self.config, self.out, self.portable = c, out, portable
        lt = torch.float64 if c.loss_dtype == "float64" and c.loss != "mse" else dt
        self.same_dtype, self.loss_dtype = lt == dt, lt
        one = torch.ones((), dtype=lt, device=dev)
        if c.loss == "mse":
            # d/dŶ Σ(Ŷ − Y)²/(N·p) = (Ŷ − Y)·2·fl(1/(N·p)), as autograd forms it
            self.Y = torch.nn.functional.one_hot(labels, p).to(dt)
            self.mse_scale = (one / (N * p) if c.loss_reduction == "mean" else one) * 2
            # portable on the CPU: the same two roundings in one numba pass (kernels/cpu/update)
            self.fused = None
            if portable and dev.type == "cpu" and out.is_contiguous():
                from grokfast.kernels.cpu import update as cpu_update
                self.fused = (cpu_update, labels.numpy().astype("int64"), out.numpy(),
                              self.mse_scale.numpy()[()])
        else:
            g = one / N if c.loss_reduction == "mean" else one          # ∂L/∂(per-sample loss)
            self.row_grad = g
            self.onehot_g = torch.nn.functional.one_hot(labels, p).to(lt) * g
            # portable on the CPU: the same operations in numba, exp and log written in the
            # source (kernels/cpu/loop_loss.py, shared with the native chunk loop)
            self.fused = None
            if portable and dev.type == "cpu" and out.is_contiguous():
                from grokfast.kernels.cpu import loop_loss
                self.fused = (loop_loss, labels.numpy().astype("int64"), out.numpy(),
                              loss_args(c, N, p, lt))
                self.parts: dict = {}   # a range's key → its scratch (rows())
        if not self.same_dtype:
            self.z_loss = torch.empty(M, N, p, dtype=lt, device=dev)     # logits in float64

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """∂L/∂Ŷ in the working dtype (the buffer `out`)."""
        c, out = self.config, self.out
        if c.loss == "mse":
            if self.fused is not None and logits.is_contiguous():
                kernel, labels, dst, scale = self.fused
                kernel.mse_grad(logits.numpy(), labels, scale, dst)
                return out
            return torch.sub(logits, self.Y, out=out).mul_(self.mse_scale)
        if self.fused is not None and logits.is_contiguous():
            kernel, labels, dst, loss = self.fused
            kernel.loss_grad_models(loss, logits.numpy(), labels, dst)
            return out
        z = logits if self.same_dtype else self.z_loss.copy_(logits)
        if c.loss == "cross_entropy":
            # ∂/∂z (logsumexp(z) − z_c)·g = g·exp(z − lse) − g·e_c
            lse = (logsumexp(z)[..., None] if self.portable
                   else torch.logsumexp(z, dim=-1, keepdim=True))
            dz = torch.sub(z, lse, out=out if z.dtype == out.dtype else None)
            dz = exp(dz) if self.portable else dz.exp_()
            dz.mul_(self.row_grad).sub_(self.onehot_g)
        else:
            # stablemax: L_i = log Σ_j s(z_j) − log s(z_c); ∂s/∂z = 1 (z ≥ 0), r² with r = 1/(1 − z)
            s = stablemax_s(z)
            s_sum = row_sum(s)[..., None] if self.portable else s.sum(-1, keepdim=True)
            ds = (self.row_grad / s_sum).expand_as(s) - self.onehot_g / s
            r = torch.reciprocal(1 - torch.clamp(z, max=0))
            dz = torch.where(z < 0, ds * (r * r), ds)
        if dz is not out:
            out.copy_(dz)                                              # float64 → working dtype
        return out


    def rows(self, key, rows: int) -> tuple:
        """CoreSplit.step's row loss (portable, on the CPU: `fused` set): (loss, labels, scale)
        of kernels/cpu/rows.rows_step for a range of rows, `key` naming the range: MSE as
        (None, labels, scale) (split_loss.mse_grad_rows: update.mse_grad's operations by rows);
        cross-entropy and stablemax as loop_loss.loss_grad's tuple with scratch for `rows` rows
        of the range's own (made once per key). Rows are independent, so any cut into ranges
        and blocks gives __call__'s bits."""
        kernel, labels, dst, arg = self.fused
        if self.config.loss == "mse":
            return None, labels, arg
        if key not in self.parts:
            self.parts[key] = loss_args(self.config, dst.shape[1], dst.shape[2], self.loss_dtype,
                                        rows=rows)
        loss = self.parts[key]
        return loss, labels, loss[2]


def loss_args(c: Config, N: int, p: int, loss_dtype: torch.dtype, rows: int = 0) -> tuple:
    """kernels/cpu/loop_loss.py's `loss` tuple of a cross-entropy or stablemax config for N
    training samples of p classes: (kind, mean, g, one, zero, and zl [n, p], el [2, n, p], al [n]
    scratch of the loss dtype for n = rows (N when 0) samples), g = 1/N for the mean, 1 for the
    sum, as LossGrad's."""
    from grokfast.kernels.cpu import loop_loss

    kind = loop_loss.CROSS_ENTROPY if c.loss == "cross_entropy" else loop_loss.STABLEMAX
    one = torch.ones((), dtype=loss_dtype)
    mean = c.loss_reduction == "mean"
    g = (one / N if mean else one).numpy()[()]
    dt, n = g.dtype, rows or N
    return (kind, mean, g, dt.type(1), dt.type(0), np.empty((n, p), dt), np.empty((2, n, p), dt),
            np.empty(n, dt))
