"""Fourier structure of the first layer: modes F_k, the paper's circle statistics, key frequencies,
per-neuron inverse participation ratio, and Nanda's restricted and excluded loss.

Rows of W1 are indexed by the input token j = 0..p−1 (the "embedding" E, [p, width]). For the concat
encoding W1 stacks two such tables, the a-block W1[:p] and the b-block W1[p:], analysed separately
(`embedding_blocks`). The mode of frequency k is

    F_k = (1/p) Σ_j e^{−2πi jk/p} E_j ∈ C^width,     k = 1..K,  K = (p − 1) // 2

(k and p − k are conjugate for real E, and k = 0 is the mean row, so these K modes are all of it).
A perfect circle of frequency k, E_j = u cos(2πjk/p + φ) + v sin(2πjk/p + φ) with ‖u‖ = ‖v‖ and u ⟂ v,
has F_k = e^{iφ}(u − iv)/2: ‖Re F_k‖ = ‖Im F_k‖ and Re F_k ⟂ Im F_k for every phase φ.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from grokfast.errors import GrokfastError
from grokfast.model import accuracy, data_loss


def embedding_blocks(W1: torch.Tensor, p: int, encoding: str = "sum") -> dict:
    """The embedding tables of W1 [..., d_in, width]: {"": W1} (sum) or {"_a": W1[:p], "_b": W1[p:]}."""
    if encoding == "sum":
        blocks = {"": W1}
    elif encoding == "concat":
        blocks = {"_a": W1[..., :p, :], "_b": W1[..., p:, :]}
    else:
        raise GrokfastError(f"encoding={encoding!r}: use 'sum' or 'concat'")
    if any(E.shape[-2] != p for E in blocks.values()):
        raise GrokfastError(f"W1 has {W1.shape[-2]} rows, which does not fit p={p} with the "
                            f"{encoding} encoding ({p if encoding == 'sum' else 2 * p} rows)")
    return blocks


def fourier_modes(E: torch.Tensor) -> torch.Tensor:
    """F_k for k = 1..(p−1)//2 of an embedding E [..., p, width] → complex [..., K, width]."""
    p = E.shape[-2]
    if p < 3:
        raise GrokfastError(f"p={p}: Fourier modes need p ≥ 3 (at least one non-constant frequency)")
    F = torch.fft.fft(E.to(torch.float64), dim=-2) / p                   # [..., p, width]
    return F[..., 1:(p - 1) // 2 + 1, :]


def _unit(v: torch.Tensor) -> torch.Tensor:
    """v / ‖v‖ along the last axis, NaN where ‖v‖ = 0."""
    n = v.norm(dim=-1, keepdim=True)
    return v / torch.where(n > 0, n, torch.full_like(n, float("nan")))


def circle_statistics(E: torch.Tensor) -> dict:
    """The paper's three circle statistics per frequency of an embedding E [..., p, width].

    Returns float64 tensors [..., K] (k = 1..K along the last axis):
      power      ‖F_k‖² = ‖Re F_k‖² + ‖Im F_k‖²
      ratio      ‖Re F_k‖ / ‖Im F_k‖                     (1 for a round circle)
      angle      angle between Re F_k and Im F_k, degrees  (90 for a circle)
      sim_within cos(|Re F_k|, |Im F_k|): |·| elementwise over hidden units, i.e. whether the real and
                 imaginary parts live on the same units (1 when their magnitudes agree unit by unit)
      sim_across mean over k' ≠ k of ½[cos(|Re F_k|, |Im F_k'|) + cos(|Re F_k'|, |Im F_k|)]: the
                 same overlap between different frequencies (0 when circles use disjoint units)
    Undefined values (a zero vector) are NaN. For i.i.d. Gaussian E both similarities are ≈ 2/π.
    """
    F = fourier_modes(E)
    re, im = F.real, F.imag                                                # [..., K, width]
    nr, ni = re.norm(dim=-1), im.norm(dim=-1)
    nan = torch.full_like(nr, float("nan"))
    ratio = nr / torch.where(ni > 0, ni, nan)
    cos = (_unit(re) * _unit(im)).sum(-1).clamp(-1.0, 1.0)
    S = _unit(re.abs()) @ _unit(im.abs()).mT                              # [..., K, K]
    K = S.shape[-1]
    within = S.diagonal(dim1=-2, dim2=-1)
    across = (S.sum(-1) + S.sum(-2) - 2 * within) / (2 * (K - 1)) if K > 1 else nan.clone()
    return dict(power=nr ** 2 + ni ** 2, ratio=ratio, angle=torch.rad2deg(torch.arccos(cos)),
                sim_within=within.contiguous(), sim_across=across)


def frequency_power(W1: torch.Tensor, p: int, encoding: str = "sum") -> torch.Tensor:
    """‖F_k‖² per frequency k = 1..K summed over W1's embedding blocks, [..., K]."""
    return sum(fourier_modes(E).abs().pow(2).sum(-1) for E in embedding_blocks(W1, p, encoding).values())


def key_frequencies(W1: torch.Tensor, p: int, encoding: str = "sum", n_keys: Optional[int] = None,
                    mass: float = 0.8) -> torch.Tensor:
    """Key frequencies of one W1 [d_in, width]: k (1-based) in decreasing ‖F_k‖², int64.

    n_keys: take that many; otherwise the fewest frequencies holding `mass` of the non-constant Fourier
    power (a trained network concentrates on a few; at initialization the power is spread evenly).
    """
    if W1.dim() != 2:
        raise GrokfastError(f"key_frequencies takes one W1 [d_in, width], got shape {tuple(W1.shape)}")
    power = frequency_power(W1, p, encoding)
    order = torch.argsort(power, descending=True)
    if n_keys is None:
        if not 0 < mass <= 1:
            raise GrokfastError(f"mass={mass} must lie in (0, 1]")
        cum = torch.cumsum(power[order], 0) / power.sum()
        n_keys = int(torch.searchsorted(cum, torch.tensor(mass, dtype=cum.dtype) - 1e-12)) + 1
    if not 1 <= n_keys <= len(power):
        raise GrokfastError(f"n_keys={n_keys} must lie between 1 and {len(power)}")
    return order[:n_keys] + 1


def neuron_ipr(W: torch.Tensor, axis: int = -2) -> torch.Tensor:
    """Inverse participation ratio of each neuron's discrete Fourier spectrum (Gromov's group).

    The DFT runs along `axis` (length p: the token axis, -2 for W1 [p, width], -1 for W2 [width, p]);
    the spectrum is folded to real frequencies, P_0 = |c_0|², P_k = |c_k|² + |c_{p−k}|² (0 < k < p/2),
    P_{p/2} = |c_{p/2}|² for even p, and IPR = Σ_k P_k² / (Σ_k P_k)² ∈ [1/(⌊p/2⌋ + 1), 1]: 1 for a
    neuron on a single frequency. The constant component is included. NaN for an all-zero neuron.
    """
    c = torch.fft.fft(W.to(torch.float64), dim=axis).abs().pow(2).movedim(axis, -1)   # [..., p]
    p = c.shape[-1]
    m = (p - 1) // 2                                                       # pairs (k, p − k)
    folded = [c[..., :1], c[..., 1:m + 1] + c[..., p - m:].flip(-1)]
    if p % 2 == 0:
        folded.append(c[..., p // 2:p // 2 + 1])
    P = torch.cat(folded, -1)
    total = P.sum(-1)
    return P.pow(2).sum(-1) / torch.where(total > 0, total, torch.full_like(total, float("nan"))) ** 2


def output_fourier_projector(p: int, keys, dtype=torch.float64) -> torch.Tensor:
    """Orthogonal projector [p, p] onto span{cos(2πkc/p), sin(2πkc/p) : k ∈ keys} over the class c."""
    c = torch.arange(p, dtype=dtype)
    cols = []
    for k in sorted({int(k) for k in keys}):
        if not 1 <= k <= (p - 1) // 2:
            raise GrokfastError(f"frequency {k} is out of range 1..{(p - 1) // 2} for p={p}")
        angle = 2 * math.pi * k * c / p
        cols += [torch.cos(angle) * math.sqrt(2 / p), torch.sin(angle) * math.sqrt(2 / p)]
    if not cols:
        return torch.zeros(p, p, dtype=dtype)
    Q = torch.stack(cols, 1)                                               # orthonormal columns
    return Q @ Q.T


def restricted_excluded_loss(config, data, W1: torch.Tensor, W2: torch.Tensor, keys) -> dict:
    """Nanda et al.'s progress measures on one model, in the config's loss and reduction.

    Construction: for every sample the logit vector ℓ ∈ R^p over the class c is split in the output's
    Fourier basis over c (the constant 1/√p, and √(2/p)·cos(2πkc/p), √(2/p)·sin(2πkc/p) for
    k = 1..(p−1)/2, orthonormal). With P the projector onto the key frequencies' cos/sin pairs:
      restricted logits  ℓ (P + 11ᵀ/p)   — only the key frequencies (and the constant, which carries no
                                           frequency and which cross-entropy ignores) are kept;
      excluded logits    ℓ (I − P)        — the key frequencies are removed, everything else kept.
    A network that computes the task through its key frequencies has a low restricted loss and a high
    excluded training loss. Returns floats {split}_{loss,acc}, {split}_restricted_{loss,acc},
    {split}_excluded_{loss,acc} for split in train, test.
    """
    from grokfast.model import forward

    W1, W2 = W1.to(torch.float64), W2.to(torch.float64)
    p = config.p
    P = output_fourier_projector(p, keys)
    keep = P + torch.full((p, p), 1.0 / p, dtype=torch.float64)
    drop = torch.eye(p, dtype=torch.float64) - P
    out = {}
    for split, index, labels in (("train", data.index_train, data.train_labels),
                                 ("test", data.index_test, data.test_labels)):
        logits = forward(W1, W2, index, config.activation)
        for name, lg in (("", logits), ("_restricted", logits @ keep), ("_excluded", logits @ drop)):
            out[f"{split}{name}_loss"] = float(data_loss(lg, labels, config))
            out[f"{split}{name}_acc"] = float(accuracy(lg, labels))
    return out
