"""The decoupled first-layer flow of §5–6 (Eq. 20), its Euler simulation, and the time map to GD.

With W2 always optimal for W1 (the fast variable), W1 follows the gradient flow of the reduced cost

    R(W1) = min_{W2} ‖σ(X W1) W2 − Y‖²_F + λ‖W1‖² + λ‖W2‖² = λ‖W1‖² + λ Tr(Yᵀ (HHᵀ + λI)⁻¹ Y),

exactly, for every λ > 0 (H = σ(X W1), the minimizer is the ridge solution W2 = Hᵀ(HHᵀ + λI)⁻¹Y and
the residual plus penalty collapse by the push-through identity). With time rescaled by 2λ,
dW1/dt = −∇R / (2λ) is

    dW1/dt = Xᵀ[(A Y Yᵀ A H) ⊙ σ'(X W1)] − W1,     A = (HHᵀ + λI)⁻¹          (Eq. 20; λ → 0: A = (HHᵀ)⁻¹)

X, Y are the training inputs and one-hot targets. A is never formed: one Cholesky factor of the n×n
Gram HHᵀ (+ λI) and two triangular solves give B = A Y, then A Y Yᵀ A H = B (Bᵀ H).

Time convention: the paper's loss is L + λ‖θ‖² (no ½); torch's weight_decay is 2λ (Config.paper_lambda).
Near the zero-loss manifold a GD step of size η moves θ by −η·2λ·P_T θ, while Eq. 20 moves it by −P_T θ
per unit time, so one unit of simulation time is 1/(2λη) = 1/(weight_decay·η) GD steps; an Euler step
of size η_sim covers η_sim units of time.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.data import make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import accuracy, activate, data_loss, init_params

from .fourier import circle_statistics, embedding_blocks, neuron_ipr


def _singular_ratio(dtype: torch.dtype) -> float:
    """A Cholesky factor whose diagonal spans more than this ratio counts as singular: the squared
    ratio bounds the condition number from below (√(64·eps): ~1e-7, i.e. cond ≳ 1e14, in float64)."""
    return math.sqrt(64 * torch.finfo(dtype).eps)


def activation_derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ'(z): relu → 1[z > 0] (σ'(0) = 0), quadratic → 2z."""
    return (z > 0).to(z.dtype) if name == "relu" else 2 * z


def _gram_factor(H: torch.Tensor, lam: float) -> torch.Tensor:
    """Lower Cholesky factor of HHᵀ + λI, [..., n, n]; GrokfastError when it is (numerically) singular."""
    n, width = H.shape[-2], H.shape[-1]
    if lam == 0 and width < n:
        raise GrokfastError(f"HHᵀ ({n}×{n}) has rank ≤ width = {width} < n = {n} training rows, so the "
                            f"λ → 0 flow is undefined; use lam > 0 (the ridge form, e.g. lam=1e-6) or a "
                            f"width above {n}")
    K = H @ H.mT                                                          # [..., n, n]
    if lam:
        K.diagonal(dim1=-2, dim2=-1).add_(lam)
    L, info = torch.linalg.cholesky_ex(K)
    diag = L.diagonal(dim1=-2, dim2=-1)
    bad = (info > 0) | ~torch.isfinite(diag).all(-1) | (diag.amin(-1) < _singular_ratio(H.dtype) * diag.amax(-1))
    if bool(bad.any()):
        dead = int((H.abs().amax(-2) == 0).sum())
        raise GrokfastError(f"HHᵀ + λI (λ = {lam:g}) is singular to working precision "
                            f"(width {width}, n {n}, {dead} hidden units dead on every training row); "
                            f"use lam > 0 (the finite-λ ridge form, e.g. lam=1e-6)")
    return L


def _flow(W1, X, Y, activation, lam):
    """Eq. 20 at W1 [..., d_in, width] for dense X [n, d_in], Y [n, p]; also returns B = A Y and H."""
    Z = X @ W1                                                            # [..., n, width]
    H = activate(activation, Z)
    L = _gram_factor(H, lam)
    B = torch.cholesky_solve(Y.expand(*H.shape[:-2], *Y.shape[-2:]), L)   # A Y  [..., n, p]
    G = B @ (B.mT @ H)                                                    # A Y Yᵀ A H  [..., n, width]
    if activation == "relu":
        G = torch.ops.aten.threshold_backward(G, H, 0.0)                  # ⊙ σ'(Z): one fused pass
    else:
        G.mul_(activation_derivative(activation, Z))
    return X.mT @ G - W1, B, H


def _check_dense(W1, X, Y, activation):
    if activation not in ("relu", "quadratic"):
        raise GrokfastError(f"activation={activation!r}: use 'relu' or 'quadratic'")
    if W1.dim() < 2 or X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0] \
            or X.shape[1] != W1.shape[-2]:
        raise GrokfastError(f"shapes do not fit Eq. 20: need W1 [..., d_in, width], X [n, d_in], "
                            f"Y [n, p]; got W1 {tuple(W1.shape)}, X {tuple(X.shape)}, Y {tuple(Y.shape)}")


def predicted_dW1(W1: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, activation: str = "relu",
                  lam: float = 0.0) -> torch.Tensor:
    """dW1/dt of Eq. 20 (time in units where 2λ = 1), W1 [..., d_in, width] → [..., d_in, width].

    X [n, d_in], Y [n, p]: the training inputs and targets (dense). lam = 0 is the paper's λ → 0 limit,
    A = (HHᵀ)⁻¹, which needs HHᵀ invertible (width ≥ n, no dead units); lam > 0 is the ridge form
    A = (HHᵀ + λI)⁻¹, exactly −∇R(W1)/(2λ) for R(W1) = λ‖W1‖² + λ Tr(Yᵀ(HHᵀ + λI)⁻¹Y).
    Raises GrokfastError when HHᵀ + λI is singular, suggesting lam > 0.
    """
    _check_dense(W1, X, Y, activation)
    X, Y = X.to(W1), Y.to(W1)
    dW1, _, _ = _flow(W1, X, Y, activation, float(lam))
    return dW1


def min_norm_W2(W1: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, activation: str = "relu",
                lam: float = 0.0) -> torch.Tensor:
    """The optimal second layer for W1: Hᵀ(HHᵀ + λI)⁻¹Y, [..., width, p].

    lam = 0: the minimum-norm interpolator H⁺Y (σ(X W1) W2 = Y exactly); lam > 0: the ridge solution
    argmin ‖H W2 − Y‖² + λ‖W2‖².
    """
    _check_dense(W1, X, Y, activation)
    X, Y = X.to(W1), Y.to(W1)
    H = activate(activation, X @ W1)
    B = torch.cholesky_solve(Y.expand(*H.shape[:-2], *Y.shape), _gram_factor(H, float(lam)))
    return H.mT @ B


def _check_time_map(lr: float, weight_decay: float) -> None:
    if not (lr > 0 and weight_decay > 0):
        raise GrokfastError(f"the time map needs lr > 0 and weight_decay > 0 (got lr={lr}, "
                            f"weight_decay={weight_decay}); without weight decay there is no drift on Z")


def sim_time_to_gd_steps(t, lr: float, weight_decay: float):
    """GD steps covering simulation time t: t / (2λη) = t / (weight_decay·lr).

    Convention: the paper's objective L + λ‖θ‖², i.e. torch weight_decay = 2λ (grad += weight_decay·θ),
    GD learning rate η = lr. t may be a float or an array; the result has the same form.
    """
    _check_time_map(lr, weight_decay)
    return np.asarray(t, dtype=np.float64) / (weight_decay * lr) if np.ndim(t) else \
        float(t) / (weight_decay * lr)


def gd_steps_to_sim_time(steps, lr: float, weight_decay: float):
    """Inverse of sim_time_to_gd_steps: steps · weight_decay · lr units of simulation time."""
    _check_time_map(lr, weight_decay)
    return np.asarray(steps, dtype=np.float64) * (weight_decay * lr) if np.ndim(steps) else \
        float(steps) * (weight_decay * lr)


@dataclass
class SimResult:
    """What `simulate` returns: one row per recorded step, one model per seed.

    history: name → float64 array [n_models, n_rows]: step, time (= step·η), train_loss, train_acc,
    test_loss, test_acc (config's loss and reduction), norm_W1, norm_W2 (the minimum-norm W2), norm,
    ipr_W1 (mean per-neuron Fourier IPR of W1's columns);
    and per embedding block ("" for the sum encoding, "_a"/"_b" for concat) the circle statistics of
    grokfast.fourier.circle_statistics with a trailing frequency axis [n_models, n_rows, K], k = 1..K:
    fourier_power{b}, fourier_ratio{b}, fourier_angle{b}, fourier_sim_within{b}, fourier_sim_across{b}.
    W1_init, W1, W2: [n_models, ...] CPU tensors (W2 the minimum-norm interpolator of the final W1).
    meta: device, dtype, eta, and "stopped" when HHᵀ turned singular mid-run: the history up to that
    step is kept, W1 is where the run stopped and W2 belongs to the last recorded step.
    """

    config: Config
    seeds: list
    lam: float
    history: dict
    W1_init: torch.Tensor
    W1: torch.Tensor
    W2: torch.Tensor
    wall_time: float = 0.0
    meta: dict = field(default_factory=dict)

    def first_step(self, name: str = "test_acc", threshold: Optional[float] = None) -> list:
        """Per model: first recorded step with history[name] ≥ threshold (default grok_threshold)."""
        thr = self.config.grok_threshold if threshold is None else threshold
        out = []
        for row, steps in zip(self.history[name], self.history["step"]):
            hit = np.nonzero(np.nan_to_num(row, nan=-np.inf) >= thr)[0]
            out.append(int(steps[hit[0]]) if len(hit) else None)
        return out

    @property
    def grok_step(self) -> list:
        return self.first_step("test_acc")

    def at_step(self, name: str, step: int) -> np.ndarray:
        """history[name] at the recorded step nearest to `step`, per model."""
        j = int(np.argmin(np.abs(self.history["step"][0] - step)))
        return self.history[name][:, j]

    def save(self, directory) -> Path:
        """config.json, history.npz, params.npz (W1_init, W1, W2 with a model axis), sim.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(self.config.to_json())
        np.savez(d / "history.npz", **self.history)
        np.savez(d / "params.npz", W1_init=self.W1_init.numpy(), W1=self.W1.numpy(),
                 W2=self.W2.numpy())
        (d / "sim.json").write_text(json.dumps(dict(seeds=self.seeds, lam=self.lam,
                                                    wall_time=self.wall_time, grok_step=self.grok_step,
                                                    **self.meta), indent=2))
        return d

    @classmethod
    def load(cls, directory) -> "SimResult":
        d = Path(directory)
        for name in ("config.json", "history.npz", "params.npz", "sim.json"):
            if not (d / name).is_file():
                raise GrokfastError(f"{d} is not a simulation directory: {name} is missing "
                                    f"(write one with SimResult.save)")
        meta = json.loads((d / "sim.json").read_text())
        with np.load(d / "history.npz") as h:
            history = {k: h[k] for k in h.files}
        with np.load(d / "params.npz") as pz:
            params = {k: torch.from_numpy(pz[k].copy()) for k in pz.files}
        seeds, lam, wall = meta.pop("seeds"), meta.pop("lam"), meta.pop("wall_time")
        meta.pop("grok_step", None)
        return cls(config=Config.from_json((d / "config.json").read_text()), seeds=seeds, lam=lam,
                   history=history, W1_init=params["W1_init"], W1=params["W1"], W2=params["W2"],
                   wall_time=wall, meta=meta)


def _start(config: Config, seeds, W1_init) -> tuple[list, torch.Tensor]:
    """(seed labels, starting W1 [n_models, d_in, width] on the CPU): init_params of each seed
    (default [config.seed]), or W1_init checked against config and seeds."""
    if W1_init is None:
        seeds = [config.seed] if seeds is None else [int(s) for s in seeds]
        if not seeds:
            raise GrokfastError("seeds is empty: pass at least one seed, e.g. seeds=range(5)")
        return seeds, torch.stack([init_params(config.replace(seed=s))[0] for s in seeds])
    W1 = torch.as_tensor(W1_init).detach()
    d_in = config.d_in
    if W1.dim() != 3 or tuple(W1.shape[1:]) != (d_in, config.width) or not len(W1):
        raise GrokfastError(f"W1_init must be [n_models, {d_in}, {config.width}] for this config "
                            f"(d_in, width); got {tuple(W1.shape)}")
    seeds = list(range(len(W1))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(W1):
        raise GrokfastError(f"W1_init holds {len(W1)} models but seeds has {len(seeds)} entries: "
                            f"give one seed (label) per model, or leave seeds out")
    return seeds, W1.clone()


def _check_simulation(config, seeds, steps, log_every, device, lam, W1_init):
    """simulate()'s arguments, validated: (seeds, starting W1 on the CPU, steps, log_every, device)."""
    if not isinstance(config, Config):
        raise GrokfastError(f"simulate() needs a grokfast.Config, got {type(config).__name__}; "
                            f"use Config.preset('paper-sim')")
    seeds, W1 = _start(config, seeds, W1_init)
    steps = config.steps if steps is None else int(steps)
    log_every = config.log_every if log_every is None else int(log_every)
    if steps < 0 or log_every < 1:
        raise GrokfastError(f"steps={steps} must be ≥ 0 and log_every={log_every} ≥ 1")
    if lam < 0:
        raise GrokfastError(f"lam={lam} must be ≥ 0")
    device = torch.device(device if device is not None else config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrokfastError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    return seeds, W1, steps, log_every, device


def _record(rows: dict, config, data, s, eta, W1, B, H, X_test, y_train, y_test):
    """Append the statistics of simulation step s to rows (name → list); returns W2 = Hᵀ B."""
    M = W1.shape[0]
    W2 = H.mT @ B                                                         # [M, width, p]
    logits_train = H @ W2
    logits_test = activate(config.activation, X_test @ W1) @ W2
    row = dict(step=np.full(M, float(s)), time=np.full(M, s * eta))
    for split, logits, labels in (("train", logits_train, y_train), ("test", logits_test, y_test)):
        row[f"{split}_loss"] = np.array([float(data_loss(lg, labels, config)) for lg in logits])
        row[f"{split}_acc"] = accuracy(logits, labels).cpu().numpy()
    n1, n2 = W1.pow(2).sum((-2, -1)), W2.pow(2).sum((-2, -1))
    row.update(norm_W1=n1.sqrt().cpu().numpy(), norm_W2=n2.sqrt().cpu().numpy(),
               norm=(n1 + n2).sqrt().cpu().numpy())
    W1c = W1.detach().cpu()
    row["ipr_W1"] = np.mean([neuron_ipr(E, axis=-2).mean(-1).numpy()
                             for E in embedding_blocks(W1c, config.p, config.encoding).values()], 0)
    for suffix, E in embedding_blocks(W1c, config.p, config.encoding).items():
        for k, v in circle_statistics(E).items():
            row[f"fourier_{k}{suffix}"] = v.numpy()
    for k, v in row.items():
        rows.setdefault(k, []).append(v)
    return W2


def simulate(config: Config, seeds: Optional[Sequence[int]] = None, steps: Optional[int] = None,
             log_every: Optional[int] = None, device=None, dtype: torch.dtype = torch.float64,
             lam: float = 0.0, progress: bool = False,
             W1_init: Optional[torch.Tensor] = None) -> SimResult:
    """Explicit Euler W1 ← W1 + η·dW1/dt on Eq. 20 (η = config.lr), W2 the minimum-norm interpolator.

    config: the task, width, activation and initialization (grokfast.model.init_params; preset
    "paper-sim" is §7.3); config.lr is the Euler step η in simulation time. seeds: one model per seed,
    simulated together along a leading model axis (batched Gram, Cholesky and solves); default
    [config.seed]. steps / log_every default to the config's. device: default config.device.
    dtype: float64 by default (paper-sim's train loss stays ~1e-24; in float32 it is ~1e-9 to 1e-7).
    lam: 0 for the paper's λ → 0 flow; > 0 for the ridge form (W2 then the ridge solution).
    Statistics are recorded at every s with s % log_every == 0 and at the last step.
    W1_init: the first layers to start from, [n_models, d_in, width] (e.g. trained parameters at
    some step), instead of init_params of each seed; seeds then only label the models (default
    0 … n_models − 1) and must have one entry per model.
    """
    seeds, W1, steps, log_every, device = _check_simulation(config, seeds, steps, log_every,
                                                            device, lam, W1_init)
    data = make_dataset(config)
    if lam == 0 and config.width < config.n_train:
        _gram_factor(torch.zeros(config.n_train, config.width), 0.0)  # raises the width message
    eta = float(config.lr)
    y_train, y_test = data.train_labels.to(device), data.test_labels.to(device)
    Y = data.Y_train.to(device=device, dtype=dtype)                          # [n, p]
    W1 = W1.to(device, dtype)
    W1_init = W1.detach().cpu().clone()
    X = data.X_train.to(device=device, dtype=dtype)                          # [n, d_in]
    X_test = data.X_test.to(device=device, dtype=dtype)
    record_at = sorted(set(range(0, steps + 1, log_every)) | {steps})
    rows: dict[str, list] = {}

    def record(s, B, H):
        return _record(rows, config, data, s, eta, W1, B, H, X_test, y_train, y_test)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, unit="step", desc=f"Eq. 20, {len(seeds)} seeds")
    t0 = time.perf_counter()
    W2, stopped = None, None
    with torch.no_grad():
        for s in range(steps + 1):
            try:
                dW1, B, H = _flow(W1, X, Y, config.activation, lam)
            except GrokfastError as e:
                if s == 0:
                    raise
                stopped = f"stopped at step {s} (everything before it is kept): {e}"
                warnings.warn(stopped)
                break
            if s == record_at[0]:
                record_at.pop(0)
                W2 = record(s, B, H)
            if s == steps:
                break
            W1.add_(dW1, alpha=eta)
            if bar is not None and (s + 1) % 100 == 0:
                bar.update(100)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    history = {k: np.stack(v, axis=1) for k, v in rows.items()}               # [M, n_rows, ...]
    meta = dict(device=str(device), dtype=str(dtype).replace("torch.", ""), eta=eta)
    if stopped:
        meta["stopped"] = stopped
    return SimResult(config=config.replace(steps=steps, log_every=log_every, eval_every=log_every),
                     seeds=seeds, lam=float(lam), history=history, W1_init=W1_init,
                     W1=W1.detach().cpu(), W2=W2.detach().cpu(), wall_time=wall, meta=meta)
