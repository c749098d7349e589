"""Per-model reductions of the torch backend, in two fixed stages, and what is built on them: ⊥Grad,
the fixed-norm rescale and the statistics rows of recorded steps (grokfast.model.STAT_NAMES, from
the reference's definitions; the losses by model.data_loss itself).

A one-stage full reduction splits across threads differently for M = 1 than for M > 1; reducing
each model's rows first, then the row sums, keeps every model's summation order independent of the
batch. The element products go to a scratch [M, S] buffer (θ's layout). With portable numerics
(`fixed=True`, the stepper's `portable`) the sums run in the written order of grokfast.numerics
instead of torch's vector-width lanes, and the square roots θ depends on (⊥Grad's norms, the
fixed-norm rescale and its target) are IEEE's correctly rounded one (`sqrt`). The statistics are
taken in two steps: the sums (Σ x·x per layer, ⟨g, θ⟩, the update's) into the row, then
finish_before / finish_after form the roots (torch's), totals and cosines; the native chunk loop
(native.py) computes the same sums in numba and calls the same finish functions on a whole
chunk's rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from grokfast import numerics
from grokfast.config import Config
from grokfast.model import STAT_NAMES, accuracy, cosine, data_loss, min_margin
from grokfast.numerics import param_norm, row_sum, total

# Statistic names in the order of the rows collected per recorded step.
STAT_INDEX = {name: k for k, name in enumerate(STAT_NAMES)}


def scratch_like(x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """A view of `buf` ([M, S]) shaped like the layer view x [M, R, C]."""
    return buf[:, : x[0].numel()].view(x.shape)


def dot(x: torch.Tensor, y: torch.Tensor, scratch: torch.Tensor, fixed: bool = False) -> torch.Tensor:
    """⟨x, y⟩ per model of layers [M, R, C], summed in two fixed stages (rows, then their sums),
    or with `fixed` in the written order of numerics.row_sum over each model's R·C products."""
    prod = torch.mul(x, y, out=scratch_like(x, scratch))
    if fixed:
        return row_sum(prod.view(x.shape[0], -1))
    return prod.sum(-1).sum(-1)


def sumsq(x: torch.Tensor, scratch: torch.Tensor, fixed: bool = False) -> torch.Tensor:
    """Σ x² per model of a layer [M, R, C]; see dot."""
    return dot(x, x, scratch, fixed)


def sqrt(x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
    """√x elementwise: with `fixed` (a CPU tensor) numpy's, IEEE's correctly rounded square root
    (the sqrt instruction on every x86-64 CPU), else torch's (not correctly rounded on every
    build: 1 ulp off for ~17 % of float32 inputs on torch 2.13's CPU kernels)."""
    if fixed and x.device.type == "cpu":
        return torch.from_numpy(np.asarray(np.sqrt(x.numpy())))
    return torch.sqrt(x)


def target_norm(W1: torch.Tensor, W2: torch.Tensor, fixed: bool = False) -> float:
    """The fixed-norm target ‖θ_0‖ in float64 of one model's initial W1, W2 (CPU): the sums of
    numerics.param_norm, and with `fixed` IEEE's square root of their total."""
    if not fixed:
        return param_norm(W1, W2, False)
    a, b = W1.double(), W2.double()
    return float(sqrt(total(a * a) + total(b * b), True))


def orthograd_(W: torch.Tensor, G: torch.Tensor, tmp: torch.Tensor, tmp2: torch.Tensor,
               eps: float = 1e-30, fixed: bool = False) -> None:
    """⊥Grad on one layer, per model: g⊥ = g − (⟨w, g⟩/(⟨w, w⟩ + ε))·w, rescaled to ‖g‖
    (kernels/cpu/loop_norms.py: the native loop's same operations)."""
    g_orth = scratch_like(W, tmp2)
    proj = dot(W, G, tmp, fixed) / (sumsq(W, tmp, fixed) + eps)         # [M]
    torch.mul(W, proj[:, None, None], out=g_orth)
    torch.sub(G, g_orth, out=g_orth)
    scale = sqrt(sumsq(G, tmp, fixed), fixed) / (sqrt(sumsq(g_orth, tmp, fixed), fixed) + eps)
    torch.mul(g_orth, scale[:, None, None], out=G)


def fixed_norm_(theta: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, target: torch.Tensor,
                tmp: torch.Tensor, fixed: bool = False) -> None:
    """θ ← θ·(target / ‖θ‖) per model (W1, W2: θ's layer views; kernels/cpu/loop_norms.py)."""
    norm = sqrt(sumsq(W1, tmp, fixed) + sumsq(W2, tmp, fixed), fixed)  # [M]
    theta.mul_((torch.reciprocal(norm) * target)[:, None])


def losses(logits: torch.Tensor, labels: torch.Tensor, configs: Sequence[Config],
           fixed: bool = False) -> torch.Tensor:
    """The data loss of each model (model.data_loss, the reference's definition): [M]. The
    portable MSE on the CPU sums in one numba pass (split_loss.mse_sum: the bits of data_loss's
    numerics.total((Ŷ − Y) ** 2) without the one-hot Y or torch's temporaries)."""
    if fixed and configs[0].loss == "mse" and logits.device.type == "cpu" and numerics.available():
        return torch.stack([_mse_loss(logits[i], labels, configs[i])
                            for i in range(len(configs))])
    return torch.stack([data_loss(logits[i], labels, configs[i], fixed_order=fixed)
                        for i in range(len(configs))])


def _mse_loss(logits: torch.Tensor, labels: torch.Tensor, c: Config) -> torch.Tensor:
    """data_loss(logits, labels, c, fixed_order=True) of an MSE config ([n, p] CPU logits)."""
    from grokfast.kernels.cpu import split_loss
    y = logits.detach().numpy()
    n, p = y.shape
    total = torch.tensor(split_loss.mse_sum(y, np.asarray(labels.numpy(), np.int64),
                                              y.dtype.type(0)), dtype=logits.dtype)
    return total / (n * p) if c.loss_reduction == "mean" else total


def stats_before(st, s: int, logits: torch.Tensor) -> torch.Tensor:
    """Statistics of TorchStepper `st` at θ_s from the data-loss gradient (before filters):
    [n_stats, M] float64. With a split stepper (st.core) the test metrics run on one of its
    threads while the caller's takes the training ones (each statistic whole on one thread)."""
    c, M, tmp, fx = st.config, st.M, st.tmp, st.portable
    W1, W2, G1, G2 = st.W1, st.W2, st.G1, st.G2
    row = torch.full((len(STAT_NAMES), M), float("nan"), dtype=torch.float64)
    values = dict(step=torch.full((M,), float(s), dtype=torch.float64))

    def train():     # the norms and cosines as sums (finish_before forms them)
        values.update(
            train_loss=losses(logits, st.labels, st.configs, fx),
            train_acc=accuracy(logits, st.labels),
            norm_W1=sumsq(W1, tmp, fx), norm_W2=sumsq(W2, tmp, fx),
            grad_norm_W1=sumsq(G1, tmp, fx), grad_norm_W2=sumsq(G2, tmp, fx),
            cos_grad_W1=dot(G1, W1, tmp, fx), cos_grad_W2=dot(G2, W2, tmp, fx),
            min_margin=min_margin(logits, st.labels_M))

    def test(test_logits):
        values.update(test_loss=losses(test_logits, st.test_labels, st.configs, fx),
                      test_acc=accuracy(test_logits, st.test_labels))
    parts = [[(train, ())]]
    if s % c.eval_every == 0:
        parts.insert(0, [(test, (st.test_logits(),))])
    core = getattr(st, "core", None)
    if core is not None:
        core.run(parts)
    else:
        for (fn, args), in parts:
            fn(*args)
    for name, v in values.items():
        row[STAT_INDEX[name]] = v.to(torch.float64).cpu()
    finish_before(row, st.dtype)
    return row


def stats_after(st, row: torch.Tensor, theta0: torch.Tensor) -> None:
    """update_norm and cos_update of θ_{s+1} − θ_s of TorchStepper `st`, written into `row`."""
    tmp, fx = st.tmp, st.portable
    d1, d2 = st.split(st.theta - theta0)
    t1, t2 = st.split(theta0)
    sums = dict(update_norm=sumsq(d1, tmp, fx) + sumsq(d2, tmp, fx),
                cos_update=-(dot(d1, t1, tmp, fx) + dot(d2, t2, tmp, fx)))
    for name, v in sums.items():      # as sums (finish_after forms them)
        row[STAT_INDEX[name]] = v.to(torch.float64).cpu()
    finish_after(row, st.dtype)


def finish_before(rows: torch.Tensor, dtype: torch.dtype) -> None:
    """The norms and cosines of statistics rows [n_stats, ...] (float64) from the sums that
    stats_before and the native loop (kernels/cpu/loop_stats.py) leave in their columns (Σ x·x
    of each layer of θ and of the gradient, ⟨g, θ⟩ of each layer), in the working dtype, in
    place."""
    def col(name):
        return rows[STAT_INDEX[name]].to(dtype)

    n1, n2 = torch.sqrt(col("norm_W1")), torch.sqrt(col("norm_W2"))
    gn1, gn2 = torch.sqrt(col("grad_norm_W1")), torch.sqrt(col("grad_norm_W2"))
    dot1, dot2 = col("cos_grad_W1"), col("cos_grad_W2")
    norm, gnorm = torch.sqrt(n1 * n1 + n2 * n2), torch.sqrt(gn1 * gn1 + gn2 * gn2)
    values = dict(norm_W1=n1, norm_W2=n2, norm=norm, grad_norm_W1=gn1, grad_norm_W2=gn2,
                  grad_norm=gnorm, cos_grad_W1=cosine(dot1, gn1, n1),
                  cos_grad_W2=cosine(dot2, gn2, n2), cos_grad=cosine(dot1 + dot2, gnorm, norm))
    for name, v in values.items():
        rows[STAT_INDEX[name]] = v.to(torch.float64)


def finish_after(rows: torch.Tensor, dtype: torch.dtype) -> None:
    """update_norm and cos_update of statistics rows from their sums (Σ d·d and −⟨d, θ_s⟩ of
    the update d, as stats_after and the native loop leave them) and ‖θ_s‖ (finish_before's)."""
    upd = torch.sqrt(rows[STAT_INDEX["update_norm"]].to(dtype))
    dt, norm = (rows[STAT_INDEX[n]].to(dtype) for n in ("cos_update", "norm"))
    rows[STAT_INDEX["update_norm"]] = upd.to(torch.float64)
    rows[STAT_INDEX["cos_update"]] = cosine(dt, upd, norm).to(torch.float64)
