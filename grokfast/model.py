"""The paper's network Ŷ = σ(X W1) W2 (no biases): initialization, activation, losses, metrics.

Shared by every backend, so all of them start from bit-identical parameters and score the same way.
Parameters are in the paper's orientation: W1 [d_in, width], W2 [width, p].
"""
from __future__ import annotations

import math

import torch

from .config import Config

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Names of the per-step statistics, in the order every backend records them. All are taken at θ_s
# (the parameters after s updates) except update_norm and cos_update, which describe θ_{s+1} − θ_s.
# "grad" is ∇L of the data loss alone (no weight decay, before any filter); norms are Frobenius;
# cos(a, b) = ⟨a, b⟩ / (‖a‖‖b‖), defined as 0 when either norm is 0.
STAT_NAMES = (
    "step",
    "train_loss", "train_acc", "test_loss", "test_acc",    # test_* are NaN between evaluations
    "norm_W1", "norm_W2", "norm",                          # ‖W1‖, ‖W2‖, ‖θ‖
    "grad_norm_W1", "grad_norm_W2", "grad_norm",           # ‖∇_W1 L‖, ‖∇_W2 L‖, ‖∇L‖
    "cos_grad_W1", "cos_grad_W2", "cos_grad",              # cos(∇L, θ) per layer and total
    "update_norm", "cos_update",                           # ‖θ_{s+1} − θ_s‖, cos(θ_{s+1} − θ_s, −θ_s)
    "min_margin",                                          # min over train of logit_c − max_{j≠c} logit_j
)


def torch_dtype(config: Config) -> torch.dtype:
    return DTYPES[config.dtype]


def init_params(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(W1 [d_in, width], W2 [width, p]) on the CPU in config.dtype, a function of config.seed only.

    "torch": nn.Linear(bias=False)'s default, kaiming_uniform(a=√5) = U(−1/√fan_in, 1/√fan_in), drawn
    in nn.Linear's [out, in] layout (so W1 equals nn.Linear(d_in, width).weight.T for the same
    generator). "normal": N(0, init_std²), init_std defaulting to 1/√fan_in. Both times init_scale.
    Drawn in float64 and rounded once, so float32 and float64 runs start from the same point; the
    same bits on every CPU (the uniform is scaled in separate ops; the normal has mean 0).
    """
    gen = torch.Generator().manual_seed(config.seed)
    shapes = ((config.width, config.d_in), (config.p, config.width))  # nn.Linear [out, in]
    out = []
    for out_f, in_f in shapes:
        w = torch.empty(out_f, in_f, dtype=torch.float64)
        if config.init == "torch":
            # U(−b, b) = u·2b − b from u ~ U(0, 1) in two roundings: torch's uniform_(−b, b) forms
            # u·(to − from) + from with an FMA under its AVX2 / AVX-512 builds only
            bound = 1.0 / math.sqrt(in_f)
            w.uniform_(0.0, 1.0, generator=gen).mul_(2 * bound).add_(-bound)
        else:
            std = config.init_std if config.init_std is not None else 1.0 / math.sqrt(in_f)
            w.normal_(0.0, std, generator=gen)
        out.append((w * config.init_scale).T.contiguous().to(torch_dtype(config)))
    return out[0], out[1]


def activate(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ(z): relu (σ'(0) = 0) or quadratic z²."""
    return torch.relu(z) if name == "relu" else z * z


def data_loss(logits: torch.Tensor, labels: torch.Tensor, config: Config,
              fixed_order: bool = False) -> torch.Tensor:
    """The data loss L (no weight decay) in the configured loss, reduction and loss dtype;
    `fixed_order`: every sum in the written order of grokfast.numerics and exp / log its written
    ones (portable numerics; not differentiable).

    mse: Σ (Ŷ − Y)² over all n·p outputs, divided by n·p for "mean".
    cross_entropy: Σ_i (logsumexp(Ŷ_i) − Ŷ_{i,c}), divided by n for "mean".
    stablemax: Σ_i −log(s(Ŷ_{i,c}) / Σ_j s(Ŷ_{i,j})), s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0).
    """
    from . import numerics

    n, p = logits.shape
    add_all = numerics.total if fixed_order else torch.sum
    if config.loss == "mse":
        y = torch.nn.functional.one_hot(labels, p).to(logits.dtype)
        total = add_all((logits - y) ** 2)
        return total / (n * p) if config.loss_reduction == "mean" else total
    z = logits.double() if config.loss_dtype == "float64" else logits
    if config.loss == "cross_entropy":
        lse = numerics.logsumexp(z) if fixed_order else torch.logsumexp(z, dim=1)
        per = lse - z.gather(1, labels[:, None])[:, 0]
    else:
        s = stablemax_s(z)
        s_sum = numerics.row_sum(s) if fixed_order else s.sum(1)
        log = numerics.log if fixed_order else torch.log
        per = log(s_sum) - log(s.gather(1, labels[:, None])[:, 0])
    total = add_all(per) / n if config.loss_reduction == "mean" else add_all(per)
    return total.to(logits.dtype)


def stablemax_s(z: torch.Tensor) -> torch.Tensor:
    """StableMax's s(x): x + 1 for x ≥ 0, 1/(1 − x) for x < 0."""
    return torch.where(z >= 0, z + 1, 1 / (1 - torch.clamp(z, max=0)))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose argmax (first maximal index on ties) is the label."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean(dim=-1)


def min_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """min_i (Ŷ_{i,c} − max_{j≠c} Ŷ_{i,j}); positive iff every training sample is classified right."""
    correct = logits.gather(-1, labels[..., None])[..., 0]
    others = logits.scatter(-1, labels[..., None], float("-inf"))
    return (correct - others.amax(dim=-1)).amin(dim=-1)


def cosine(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ / (‖a‖‖b‖), 0 where either norm is 0."""
    den = norm_a * norm_b
    return torch.where(den > 0, dot / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(den))


def forward(W1: torch.Tensor, W2: torch.Tensor, index: torch.Tensor, activation: str) -> torch.Tensor:
    """Logits σ(W1[i0] + W1[i1]) W2 for samples given by their two W1 row indices ([n, 2])."""
    return activate(activation, W1[index[:, 0]] + W1[index[:, 1]]) @ W2


@torch.no_grad()
def evaluate(config: Config, data, W1: torch.Tensor, W2: torch.Tensor) -> dict:
    """Train and test loss and accuracy of one model's parameters, as floats (with portable
    numerics on the CPU through grokfast.numerics, the same bits on every CPU)."""
    from . import numerics

    portable = W1.device.type == "cpu" and numerics.portable(config)
    out = {}
    for split, index, labels in (("train", data.index_train, data.train_labels),
                                 ("test", data.index_test, data.test_labels)):
        if portable:
            logits = numerics.logits(W1, W2, index, config.activation)
        else:
            logits = forward(W1, W2, index.to(W1.device), config.activation)
        labels = labels.to(W1.device)
        out[f"{split}_loss"] = float(data_loss(logits, labels, config, fixed_order=portable))
        out[f"{split}_acc"] = float(accuracy(logits, labels))
    return out


def step_lr(config: Config, step: int) -> float:
    """Learning rate of update `step` (0-based): linear warmup, and the Grokfast 1/(1 + λ) switch."""
    lr = config.lr
    if config.warmup_steps:
        lr = lr * min(1.0, (step + 1) / config.warmup_steps)
    if config.filter_normalize_lr and config.grad_filter != "none":
        lr = lr / (1.0 + config.filter_lamb)
    return lr
