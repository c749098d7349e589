"""`grokfast reproduce paper`: the paper's Fig. 6 and Fig. 5, two figures beyond it, and a report.

    grokfast reproduce paper [--quick] [--out DIR] [--seeds N]

writes into DIR (default runs/reproduce-paper-TIME):

  fig6_simulation.png   paper-sim (§7.3): Euler on Eq. 20 — test accuracy, train loss, ‖W1‖ over steps
  fig6_fourier.png      the circle statistics per frequency at initialization and at the end
  fig6_fourier_time.png the same statistics over the run, averaged over the final key frequencies
  fig5_alignment.png    paper-real (App. D): train/test loss and cos(Δθ, g̃) per probe step
  shared_time.png       trained vs simulated test accuracy from the same initialization, on GD steps
  geometry.png          ‖θ‖, distance to Z ‖θ − θ'‖ and σ_min(J) over training
  report.md             every measured number beside the paper's, settings and run times
  sim/, real/, shared_sim/   the raw results (SimResult / Result directories)

Seeds are drawn in one launch per experiment (batched). Every curve plots each seed transparent and
their mean opaque. Full mode: 5 seeds, paper-sim 5000 Euler steps, paper-real 100k GD steps with a
probe every 1000 steps plus log-spaced early ones: about 5 minutes on 2 CPU cores (measured 4 min
57 s on an idle 2-core Xeon; 18 min on the same machine shared with other jobs at load 4–6).
--quick: 2 seeds, 3000 Euler steps, 50k GD steps, fewer probes: about 1.5 minutes (measured 85 s).
--sim-steps / --real-steps / --probe-every shrink it further (the CI test uses them).
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .config import Config
from .errors import GrokfastError

# The paper's reported numbers (and the independent float64 check in PAPER.md), as printed beside ours.
PAPER = {
    "sim_chance_until": "chance (1/37 ≈ 0.027) until ~500 steps (independent float64 run: ~1000)",
    "sim_grok": "100 % by ~2000 steps (independent float64 run: 0.87 at 2000, ≥ 0.995 from 2250)",
    "sim_train_loss": "exactly 0 throughout",
    "sim_norm": "‖E‖ 22.5 → 12.0 at step 5000, rising to ~45 first (independent float64 run)",
    "fourier": "after grokking: ‖Re F_k‖ ≈ ‖Im F_k‖, Re F_k ⟂ Im F_k, supports agree within a "
               "frequency and differ across frequencies",
    "real_memorize": "memorizes by ~10k steps (one seed, independent run)",
    "real_grok": "100 % test accuracy between ~20k and ~50k steps (seed 0 with the reference: ~31k)",
    "real_cos": "cos(Δθ, g̃) peaks during grokking (Fig. 5; peak height not stated)",
}

@dataclass
class Budget:
    """How much of each experiment to run."""

    sim_seeds: int = 5
    sim_steps: int = 5000
    real_seeds: int = 5
    real_steps: int = 100_000
    probe_every: int = 1000
    probe_at: tuple = (20, 50, 100, 200, 300, 500, 700, 1500, 2000, 3000, 5000, 7000)
    probe_lag: int = 10
    probe_gd_steps: int = 100
    shared_eta: float = 1e-3
    mode: str = "full"

    @property
    def sim_log_every(self) -> int:
        return max(1, min(50, self.sim_steps // 10))

    @property
    def real_log_every(self) -> int:
        return max(1, min(100, self.real_steps // 20))


def make_budget(quick: bool = False, seeds: Optional[int] = None, sim_steps: Optional[int] = None,
                real_steps: Optional[int] = None, probe_every: Optional[int] = None) -> Budget:
    """Full or quick budget, with any of seeds (both experiments), sim_steps, real_steps,
    probe_every overridden."""
    b = Budget(sim_seeds=2, sim_steps=3000, real_seeds=2, real_steps=50_000, probe_every=2500,
               probe_at=(100, 300, 1000, 2000, 5000), mode="quick") if quick else Budget()
    if seeds is not None:
        if seeds < 1:
            raise GrokfastError(f"--seeds {seeds}: need at least 1 seed")
        b.sim_seeds = b.real_seeds = seeds
    for name, v in (("sim_steps", sim_steps), ("real_steps", real_steps), ("probe_every", probe_every)):
        if v is not None:
            if v < 1:
                raise GrokfastError(f"--{name.replace('_', '-')} {v}: must be ≥ 1")
            setattr(b, name, int(v))
    if b.probe_every < b.probe_lag:
        raise GrokfastError(f"--probe-every {b.probe_every}: must be ≥ the probe lag {b.probe_lag}")
    b.probe_at = tuple(t for t in b.probe_at if b.probe_lag <= t <= b.real_steps)
    return b


def _backend(backend: str) -> str:
    """'auto' falls back to the reference loop where the torch backend is not installed."""
    if backend == "auto" and importlib.util.find_spec("grokfast.torch_backend") is None:
        return "reference"
    return backend


# ---------------------------------------------------------------------------- experiments
def run_simulation(b: Budget):
    """Fig. 6: paper-sim, Eq. 20 with the minimum-norm W2, b.sim_seeds seeds batched."""
    from .theory import simulate
    config = Config.preset("paper-sim")
    return simulate(config, seeds=range(b.sim_seeds), steps=b.sim_steps, log_every=b.sim_log_every)


def run_euler_check(b: Budget) -> dict:
    """‖E‖ of paper-sim seed 0 at simulation time t = η·min(40, sim_steps) with the paper's η and with
    η/10: how far the explicit Euler step is from the flow during the stiff initial transient."""
    from .theory import simulate
    config = Config.preset("paper-sim")
    t_check = config.lr * min(40, b.sim_steps)
    out = {}
    for eta in (config.lr, config.lr / 10):
        steps = max(1, round(t_check / eta))
        res = simulate(config.replace(lr=eta), seeds=[0], steps=steps, log_every=steps)
        out[eta] = dict(steps=steps, norm=float(res.history["norm_W1"][0, -1]),
                        norm_init=float(res.history["norm_W1"][0, 0]))
    return {"t": t_check, "by_eta": out}


def real_config(b: Budget) -> Config:
    log = b.real_log_every
    return Config.preset("paper-real", steps=b.real_steps, log_every=log, eval_every=log)


def run_real(b: Budget, backend: str = "auto"):
    """Fig. 5: paper-real trained by GD with the alignment probe, b.real_seeds seeds batched."""
    from .data import make_dataset
    from .engine import train
    from .probe import AlignmentProbe
    config = real_config(b)
    probe = AlignmentProbe(config, make_dataset(config), every=b.probe_every, lag=b.probe_lag,
                           at=b.probe_at, gd_steps=b.probe_gd_steps)
    return train(config, seeds=range(b.real_seeds), backend=_backend(backend), observers=[probe])


def run_shared(b: Budget):
    """Eq. 20 from paper-real's initialization (same seeds), long enough to cover the trained run."""
    from .theory import gd_steps_to_sim_time, simulate
    config = real_config(b)
    t_end = gd_steps_to_sim_time(b.real_steps, config.lr, config.weight_decay)
    steps = max(1, math.ceil(t_end / b.shared_eta))
    sim_config = config.replace(lr=b.shared_eta, steps=steps, dtype="float64",
                                log_every=max(1, steps // 200), eval_every=max(1, steps // 200))
    return simulate(sim_config, seeds=range(b.real_seeds))


# ---------------------------------------------------------------------------- summaries
def _at(steps: np.ndarray, values: np.ndarray, step: int) -> float:
    """values at the recorded step `step` exactly, NaN when it was not recorded."""
    hit = np.nonzero(steps == step)[0]
    return float(values[hit[0]]) if len(hit) else float("nan")


def summarize_simulation(sim) -> dict:
    """Per seed: accuracy milestones, the grok step, train loss, ‖W1‖ init / peak / end."""
    h = sim.history
    out = {"grok_step": sim.grok_step, "seeds": sim.seeds, "rows": []}
    for i in range(len(sim.seeds)):
        st = h["step"][i]
        row = {f"acc_{s}": _at(st, h["test_acc"][i], s) for s in (500, 1000, 2000, 2250, 3000)}
        j = int(np.argmax(h["norm_W1"][i]))
        row.update(grok_step=sim.grok_step[i], max_train_loss=float(np.max(h["train_loss"][i])),
                   min_train_acc=float(np.min(h["train_acc"][i])),
                   final_test_acc=float(h["test_acc"][i, -1]),
                   norm_init=float(h["norm_W1"][i, 0]), norm_peak=float(h["norm_W1"][i, j]),
                   norm_peak_step=int(st[j]), norm_end=float(h["norm_W1"][i, -1]))
        out["rows"].append(row)
    return out


def fourier_deviations(sim) -> dict:
    """Per model and recorded step, over all frequencies: mean |ratio − 1|, mean |angle − 90°|, mean
    within- and across-frequency support similarity → name → [n_models, n_rows]."""
    h = sim.history
    with np.errstate(all="ignore"):
        return {"ratio_dev": np.nanmean(np.abs(h["fourier_ratio"] - 1), -1),
                "angle_dev": np.nanmean(np.abs(h["fourier_angle"] - 90), -1),
                "within": np.nanmean(h["fourier_sim_within"], -1),
                "across": np.nanmean(h["fourier_sim_across"], -1)}


def summarize_fourier(sim) -> dict:
    """Circle statistics at init and end, over all frequencies k = 1..(p−1)/2: mean and max of
    |‖Re F_k‖/‖Im F_k‖ − 1| and |angle − 90°|, mean within / across support similarity, mean neuron
    IPR, and the number of key frequencies (holding 80 % of the Fourier power)."""
    from .fourier import key_frequencies
    h, dev = sim.history, fourier_deviations(sim)
    rows = []
    for i in range(len(sim.seeds)):
        row = {}
        for when, j, W1 in (("init", 0, sim.W1_init[i]), ("end", -1, sim.W1[i])):
            row[f"n_keys_{when}"] = len(key_frequencies(W1, sim.config.p, sim.config.encoding, mass=0.8))
            for name in dev:
                row[f"{name}_{when}"] = float(dev[name][i, j])
            row[f"ratio_max_dev_{when}"] = float(np.nanmax(np.abs(h["fourier_ratio"][i, j] - 1)))
            row[f"angle_max_dev_{when}"] = float(np.nanmax(np.abs(h["fourier_angle"][i, j] - 90)))
            row[f"ipr_{when}"] = float(h["ipr_W1"][i, j])
        rows.append(row)
    return {"rows": rows}


def _first_below(steps, values, threshold) -> Optional[int]:
    hit = np.nonzero(np.nan_to_num(values, nan=np.inf) <= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def summarize_real(real) -> dict:
    """Per seed: memorization (train acc 1; train loss within 10× of its final value), grok step,
    the alignment cosine's peak (value, step, where it falls), its value near grokking and at the end."""
    rows = []
    for r in real:
        h, e = r.history, r.extras
        ps, cos = e.get("probe_step", np.zeros(0)), e.get("probe_cos", np.zeros(0))
        loss_step = _first_below(h["step"], h["train_loss"], 10 * h["train_loss"][-1])
        row = dict(seed=r.config.seed, memorization_step=r.memorization_step, loss_step=loss_step,
                   grok_step=r.grok_step, final_test_acc=r.final.get("test_acc", float("nan")),
                   norm_init=float(h["norm"][0]), norm_end=r.final.get("norm", float("nan")))
        if len(cos) and np.isfinite(cos).any():
            j = int(np.nanargmax(cos))
            row.update(peak_cos=float(cos[j]), peak_step=int(ps[j]), cos_end=float(cos[-1]),
                       dist_end=float(e["probe_dist"][-1]), sigma_min_end=float(e["probe_sigma_min"][-1]))
            mem, grok = r.memorization_step, r.grok_step
            row["peak_between"] = bool(mem is not None and grok is not None and mem < ps[j] < grok)
            row["peak_after_loss_step"] = bool(loss_step is not None and ps[j] >= loss_step)
            if grok is not None:
                k = int(np.argmin(np.abs(ps - grok)))
                row.update(cos_at_grok=float(cos[k]), cos_at_grok_step=int(ps[k]))
        rows.append(row)
    return {"rows": rows}


def summarize_shared(shared, real) -> dict:
    """Simulated grok time mapped to GD steps beside the trained grok step, per seed."""
    from .theory import sim_time_to_gd_steps
    c = real[0].config
    rows = []
    for i, r in enumerate(real):
        g = shared.grok_step[i]
        rows.append(dict(seed=r.config.seed, trained_grok=r.grok_step,
                         sim_grok_euler=g, sim_grok_time=None if g is None else g * shared.meta["eta"],
                         sim_grok_gd=None if g is None else
                         sim_time_to_gd_steps(g * shared.meta["eta"], c.lr, c.weight_decay)))
    return {"rows": rows}


# ---------------------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _seeds_and_mean(ax, x, Y, color, label, log_x=False, **kw):
    """Each row of Y transparent, the NaN-aware mean opaque."""
    Y = np.atleast_2d(Y)
    for y in Y:
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], color=color, alpha=0.25, lw=0.8, **kw)
    with np.errstate(all="ignore"):
        m = np.nanmean(Y, 0) if len(Y) > 1 else Y[0]
    ok = np.isfinite(m)
    ax.plot(x[ok], m[ok], color=color, lw=1.8, label=label, **kw)
    if log_x:
        ax.set_xscale("log")


def plot_simulation(sim, path) -> None:
    plt = _plt()
    h = sim.history
    x = h["step"][0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _seeds_and_mean(axes[0], x, h["test_acc"], "C1", "test")
    _seeds_and_mean(axes[0], x, h["train_acc"], "C0", "train")
    axes[0].axhline(1 / sim.config.p, color="gray", ls=":", lw=0.8, label="chance")
    axes[0].set(xlabel="Euler step (η = %g)" % sim.meta["eta"], ylabel="accuracy",
                title="Eq. 20: accuracy", ylim=(-0.02, 1.02))
    axes[0].legend()
    sec = axes[0].secondary_xaxis("top", functions=(lambda s: s * sim.meta["eta"],
                                                    lambda t: t / sim.meta["eta"]))
    sec.set_xlabel("simulation time t")
    _seeds_and_mean(axes[1], x, np.maximum(h["train_loss"], 1e-40), "C0", "train")
    _seeds_and_mean(axes[1], x, h["test_loss"], "C1", "test")
    axes[1].set(yscale="log", xlabel="Euler step", ylabel=f"loss ({sim.config.loss}, "
                f"{sim.config.loss_reduction})", title="loss (train ≈ 0: W2 interpolates)")
    axes[1].legend()
    _seeds_and_mean(axes[2], x, h["norm_W1"], "C2", "‖W1‖ = ‖E‖")
    _seeds_and_mean(axes[2], x, h["norm_W2"], "C3", "‖W2‖ (min-norm)")
    axes[2].set(xlabel="Euler step", ylabel="norm", title="weight norms")
    axes[2].legend()
    fig.suptitle(f"paper-sim: p={sim.config.p}, width {sim.config.width}, "
                 f"{len(sim.seeds)} seeds (transparent) and their mean", fontsize=10)
    _save(fig, path)


def plot_fourier(sim, path) -> None:
    plt = _plt()
    h = sim.history
    K = h["fourier_ratio"].shape[-1]
    k = np.arange(1, K + 1)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    specs = (("ratio", "‖Re F_k‖ / ‖Im F_k‖", "log"), ("angle", "angle(Re F_k, Im F_k) [deg]", "linear"))
    for ax, (name, label, scale) in zip(axes[:2], specs):
        for j, (when, color) in enumerate(((0, "gray"), (-1, "C3"))):
            V = h[f"fourier_{name}"][:, when]
            for v in V:
                ax.plot(k + (j - 0.5) * 0.15, v, "o", color=color, alpha=0.35, ms=3)
            ax.plot(k, np.nanmean(V, 0), "-", color=color, lw=1.5,
                    label="initialization" if when == 0 else "end")
        ax.set(xlabel="frequency k", ylabel=label, yscale=scale)
        ax.axhline(1.0 if name == "ratio" else 90.0, color="k", lw=0.6, ls=":")
        ax.legend()
    ax = axes[2]
    for when, color, lab in ((0, "gray", "init"), (-1, "C3", "end")):
        ax.plot(k, np.nanmean(h["fourier_sim_within"][:, when], 0), "-o", color=color, ms=3,
                label=f"within ({lab})")
        ax.plot(k, np.nanmean(h["fourier_sim_across"][:, when], 0), "--s", color=color, ms=3,
                label=f"across ({lab})")
    ax.set(xlabel="frequency k", ylabel="cos(|Re F_k|, |Im F_k'|)",
           title="support similarity (mean of seeds)")
    ax.legend(fontsize=8)
    ax = axes[3]
    for when, color, lab in ((0, "gray", "init"), (-1, "C3", "end")):
        P = h["fourier_power"][:, when]
        for v in P:
            ax.plot(k, v / v.sum(), color=color, alpha=0.35, lw=0.8)
        ax.plot(k, np.nanmean(P / P.sum(-1, keepdims=True), 0), color=color, lw=1.5, label=lab)
    ax.set(xlabel="frequency k", ylabel="‖F_k‖² / Σ‖F_k‖²", title="Fourier power of E")
    ax.legend()
    fig.suptitle("paper-sim, Fig. 6: circle statistics per frequency at initialization and at the end",
                 fontsize=10)
    _save(fig, path)


def plot_fourier_time(sim, path) -> None:
    plt = _plt()
    x = sim.history["step"][0]
    dev = fourier_deviations(sim)
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    _seeds_and_mean(axes[0], x, dev["ratio_dev"], "C4", "mean over k")
    axes[0].set(yscale="log", title="|‖Re F_k‖/‖Im F_k‖ − 1|")
    _seeds_and_mean(axes[1], x, dev["angle_dev"], "C4", "mean over k")
    axes[1].set(yscale="log", title="|angle(Re F_k, Im F_k) − 90°|")
    _seeds_and_mean(axes[2], x, dev["within"], "C3", "within a frequency")
    _seeds_and_mean(axes[2], x, dev["across"], "C0", "across frequencies")
    axes[2].set(title="support similarity cos(|Re F_k|, |Im F_k'|)")
    axes[2].legend()
    _seeds_and_mean(axes[3], x, sim.history["ipr_W1"], "C2", "mean over neurons")
    axes[3].set(title="neuron Fourier IPR of W1")
    for ax in axes:
        ax.set_xlabel("Euler step")
    fig.suptitle("paper-sim: circle statistics over the run (seeds transparent, mean opaque)",
                 fontsize=10)
    _save(fig, path)


def plot_alignment(real, path) -> None:
    plt = _plt()
    H = real.history
    x = H["step"][0] + 1
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    _seeds_and_mean(axes[0], x, H["train_loss"], "C0", "train", log_x=True)
    ok = np.isfinite(H["test_loss"][0])
    _seeds_and_mean(axes[0], x[ok], H["test_loss"][:, ok], "C1", "test", log_x=True)
    axes[0].set(yscale="log", xlabel="GD step + 1", ylabel="MSE (mean)", title="paper-real: loss")
    axes[0].legend()
    ps = np.stack([r.extras["probe_step"] for r in real])
    cos = np.stack([r.extras["probe_cos"] for r in real])
    _seeds_and_mean(axes[1], ps[0], cos, "C3", "cos(Δθ, g̃)", log_x=True, marker=".")
    for r in real:
        for s, ls in ((r.memorization_step, ":"), (r.grok_step, "--")):
            if s is not None:
                axes[1].axvline(max(s, 1), color="gray", ls=ls, lw=0.8, alpha=0.5)
    axes[1].set(xlabel="GD step (dotted: train acc 1, dashed: grokked)", ylabel="cosine",
                title="alignment of Δθ (10 steps) with the tangent direction g̃")
    axes[1].legend()
    fig.suptitle(f"paper-real (App. D, Fig. 5): {len(real)} seeds transparent, mean opaque",
                 fontsize=10)
    _save(fig, path)


def plot_shared(shared, real, path) -> None:
    from .theory import sim_time_to_gd_steps
    plt = _plt()
    c = real[0].config
    H = real.history
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ok = np.isfinite(H["test_acc"][0])
    _seeds_and_mean(ax, H["step"][0][ok] + 1, H["test_acc"][:, ok], "C1", "trained (GD)", log_x=True)
    xs = sim_time_to_gd_steps(shared.history["time"][0], c.lr, c.weight_decay)
    _seeds_and_mean(ax, xs + 1, shared.history["test_acc"], "C4", "Eq. 20 simulation", log_x=True,
                    ls="--")
    ax.set(xlabel=f"GD steps (sim. time t ↦ t/(weight_decay·lr) = t·{1 / (c.weight_decay * c.lr):g})",
           ylabel="test accuracy", ylim=(-0.02, 1.02),
           title="same initialization, shared time axis (paper-real)")
    ax.legend()
    _save(fig, path)


def plot_geometry(shared, real, path) -> None:
    from .theory import sim_time_to_gd_steps
    plt = _plt()
    c = real[0].config
    H = real.history
    x = H["step"][0] + 1
    ps = real[0].extras["probe_step"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    _seeds_and_mean(axes[0], x, H["norm"], "C0", "‖θ‖ trained", log_x=True)
    _seeds_and_mean(axes[0], x, H["norm_W1"], "C2", "‖W1‖ trained", log_x=True)
    xs = sim_time_to_gd_steps(shared.history["time"][0], c.lr, c.weight_decay) + 1
    _seeds_and_mean(axes[0], xs, shared.history["norm_W1"], "C4", "‖W1‖ Eq. 20", log_x=True, ls="--")
    axes[0].set(xlabel="GD step + 1", ylabel="norm", title="norms")
    axes[0].legend()
    _seeds_and_mean(axes[1], ps, np.stack([r.extras["probe_dist"] for r in real]), "C3",
                    "‖θ − θ'‖", log_x=True, marker=".")
    ax2 = axes[1].twinx()
    _seeds_and_mean(ax2, ps, np.stack([r.extras["probe_residual"] for r in real]), "C7",
                    "L(θ')", log_x=True, marker=".")
    ax2.set(yscale="log", ylabel="residual loss L(θ') (gray)")
    axes[1].set(xlabel="GD step", ylabel="distance to Z", yscale="log",
                title="distance to the zero-loss manifold")
    h1, l1 = axes[1].get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    axes[1].legend(h1 + h2, l1 + l2, loc="upper right")
    _seeds_and_mean(axes[2], ps, np.stack([r.extras["probe_sigma_min"] for r in real]), "C5",
                    "σ_min(J)", log_x=True, marker=".")
    axes[2].set(xlabel="GD step", ylabel="σ_min(J) at θ'", title="smallest singular value of J")
    _save(fig, path)


# ---------------------------------------------------------------------------- report
def _f(v, fmt="{:.3f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return "—"
    return fmt.format(v) if isinstance(v, float) else str(v)


def _table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def write_report(path, b: Budget, sim, real, shared, sums: dict, timings: dict, backend: str) -> None:
    s, fo, rl, sh = sums["sim"], sums["fourier"], sums["real"], sums["shared"]
    L = [f"# Reproduction of *The Geometry of Grokking* (arXiv 2511.01938) — {b.mode} mode", "",
         "Measured here, beside what the paper (and PAPER.md's independent check) reports. "
         "Generated by `grokfast reproduce paper`; numbers come from the runs in this directory.", ""]
    L += ["## Settings and run times", "",
          f"- paper-sim (§7.3): p=37, width 512, f_s 0.7 ({sim.config.n_train} train pairs), "
          f"E ~ N(0, 1/37), Euler η = {sim.meta['eta']:g}, {b.sim_steps} steps, seeds "
          f"{sim.seeds}, float64, λ → 0 (A = (HHᵀ)⁻¹), W2 = minimum-norm interpolator.",
          f"- paper-real (App. D): p=11, width 128, ReLU, MSE (mean), GD lr 1, weight decay 1e-4 "
          f"(torch convention, λ = 5e-5), {b.real_steps} steps, seeds {[r.config.seed for r in real]}, "
          f"backend {real[0].backend}.",
          f"- alignment probe: Δθ over {b.probe_lag} steps; θ' by {b.probe_gd_steps} GD steps (lr 1, "
          f"momentum 0.9, no weight decay); g̃ = (I − J⁺J)(−θ) by conjugate gradient on JJᵀ; "
          f"probes every {b.probe_every} steps and at {list(b.probe_at)}.",
          f"- shared axis: Eq. 20 from paper-real's initialization, η = {b.shared_eta:g}; simulation "
          f"time t ↦ t / (weight_decay·lr) GD steps (paper's L + λ‖θ‖², weight_decay = 2λ).",
          f"- seeds vary the initialization; the train/test split is the config's split_seed "
          f"({sim.config.split_seed}) for every seed. Statistics are recorded every "
          f"{sim.config.log_every} Euler steps and every {real[0].config.log_every} GD steps, which "
          f"sets the resolution of every \"first step\" below.", ""]
    L += _table(["stage", "wall time [s]"], [[k, f"{v:.1f}"] for k, v in timings.items()])
    L += ["", f"Simulation: {timings.get('simulation (paper-sim)', float('nan')) / len(sim.seeds):.1f} s "
          f"per seed ({len(sim.seeds)} seeds batched).", ""]

    L += ["## Fig. 6 — the simulation (paper-sim)", "", "![](fig6_simulation.png)", "",
          f"Paper: test accuracy {PAPER['sim_chance_until']}; {PAPER['sim_grok']}; training loss "
          f"{PAPER['sim_train_loss']}; {PAPER['sim_norm']}.", ""]
    rows = []
    for seed, r in zip(s["seeds"], s["rows"]):
        rows.append([str(seed), _f(r["acc_500"]), _f(r["acc_1000"]), _f(r["acc_2000"]),
                     _f(r["acc_2250"]), _f(r["acc_3000"]), _f(r["grok_step"]),
                     _f(r["max_train_loss"], "{:.1e}"), _f(r["norm_init"], "{:.1f}"),
                     f"{r['norm_peak']:.1f} @ {r['norm_peak_step']}", _f(r["norm_end"], "{:.2f}")])
    L += _table(["seed", "acc@500", "acc@1000", "acc@2000", "acc@2250", "acc@3000",
                 "first step acc ≥ 0.99", "max train loss", "‖E‖ init", "‖E‖ peak", "‖E‖ end"], rows)
    eu = sums["euler"]
    (e1, r1), (e2, r2) = eu["by_eta"].items()
    L += ["", f"Euler check (seed 0): at simulation time t = {eu['t']:g}, ‖E‖ = {r1['norm']:.2f} with "
          f"η = {e1:g} ({r1['steps']} steps) and {r2['norm']:.2f} with η = {e2:g} ({r2['steps']} steps), "
          f"from {r1['norm_init']:.2f}. A large gap means the early rise of ‖E‖ is the explicit Euler "
          f"step on the stiff initial transient (A = (HHᵀ)⁻¹ with width 512 barely above n = "
          f"{sim.config.n_train}), not the flow."]
    ok500 = [r["acc_500"] < 0.1 for r in s["rows"] if math.isfinite(r["acc_500"])]
    ok3000 = [r["grok_step"] is not None and r["grok_step"] <= 3000 for r in s["rows"]]
    L += ["", f"Criteria: test accuracy < 0.1 at step 500 for {sum(ok500)} of {len(ok500)} seeds; "
          f"≥ 0.99 by step 3000 for {sum(ok3000)} of {len(ok3000)} seeds.", ""]

    L += ["### Circle statistics (Fig. 6, right)", "", "![](fig6_fourier.png)", "",
          "![](fig6_fourier_time.png)", "", f"Paper: {PAPER['fourier']}.", "",
          "Over all frequencies k = 1..18: the deviations |‖Re F_k‖/‖Im F_k‖ − 1| and "
          "|angle − 90°| (mean, and max in brackets), the support similarity cos(|Re F_k|, |Im F_k'|) "
          "within a frequency (k = k') and across (k ≠ k'), the mean neuron Fourier IPR, and the "
          "number of key frequencies holding 80 % of the Fourier power. For i.i.d. Gaussian E both "
          "similarities are ≈ 2/π ≈ 0.64 and neither deviation is 0 (finite width); circles with "
          "their own units per frequency keep the within-similarity and drive the across one to 0.",
          ""]
    rows = []
    for seed, r in zip(s["seeds"], fo["rows"]):
        rows.append([str(seed)] + [
            f"{r[f'ratio_dev_{w}']:.4f} ({r[f'ratio_max_dev_{w}']:.3f})" for w in ("init", "end")] + [
            f"{r[f'angle_dev_{w}']:.2f} ({r[f'angle_max_dev_{w}']:.2f})" for w in ("init", "end")] + [
            f"{r['within_init']:.3f} → {r['within_end']:.3f}",
            f"{r['across_init']:.3f} → {r['across_end']:.3f}",
            f"{r['ipr_init']:.3f} → {r['ipr_end']:.3f}", f"{r['n_keys_init']} → {r['n_keys_end']}"])
    L += _table(["seed", "\\|ratio − 1\\| init", "\\|ratio − 1\\| end", "\\|angle − 90°\\| init",
                 "\\|angle − 90°\\| end", "within", "across", "neuron IPR", "key freqs (80 %)"], rows)
    L += ["", "## Fig. 5 — alignment during real training (paper-real)", "", "![](fig5_alignment.png)",
          "", f"Paper: {PAPER['real_memorize']}; {PAPER['real_grok']}; {PAPER['real_cos']}.", "",
          "Memorization: first step with training accuracy 1 (\"train acc 1\"), and first step with the "
          "training loss within 10× of its final value (\"loss\").", ""]
    rows = []
    for r in rl["rows"]:
        rows.append([str(r["seed"]), _f(r["memorization_step"]), _f(r["loss_step"]),
                     _f(r["grok_step"]), _f(r.get("peak_cos")), _f(r.get("peak_step")),
                     "yes" if r.get("peak_between") else "no",
                     f"{_f(r.get('cos_at_grok'))} @ {_f(r.get('cos_at_grok_step'))}",
                     _f(r.get("cos_end")), _f(r["final_test_acc"]),
                     f"{r['norm_init']:.2f} → {_f(r['norm_end'], '{:.2f}')}"])
    L += _table(["seed", "train acc 1", "loss", "grok (test ≥ 0.99)", "peak cos", "peak step",
                 "peak between memorization and grok", "cos near grok", "cos at end",
                 "final test acc", "‖θ‖"], rows)
    between = [r.get("peak_between", False) for r in rl["rows"]]
    peaks = [r["peak_cos"] for r in rl["rows"] if "peak_cos" in r]
    L += ["", f"Criterion: the cosine peaks between memorization (train acc 1) and grokking for "
          f"{sum(between)} of {len(between)} seeds; peak height "
          f"{min(peaks, default=float('nan')):.3f}–{max(peaks, default=float('nan')):.3f}."]
    where = [f"seed {r['seed']}: peak at {r['peak_step']} = {r['peak_step'] / r['loss_step']:.1f}× the "
             f"loss-memorization step and {r['peak_step'] / r['grok_step']:.2f}× the grok step"
             for r in rl["rows"] if r.get("peak_step") and r["loss_step"] and r["grok_step"]]
    if where:
        L += ["Where the peak falls: " + "; ".join(where) + "."]
    L += [""]

    L += ["## Beyond the paper", "", "### Trained and simulated test accuracy on one time axis", "",
          "![](shared_time.png)", ""]
    rows = [[str(r["seed"]), _f(r["trained_grok"]), _f(r["sim_grok_euler"]),
             _f(r["sim_grok_time"], "{:.3f}"), _f(r["sim_grok_gd"], "{:.0f}")] for r in sh["rows"]]
    L += _table(["seed", "trained grok step", "sim grok (Euler step)", "sim grok time t",
                 "sim grok in GD steps"], rows)
    L += ["", "The simulation starts on Z (W2 optimal at once) while GD first has to memorize, so "
          "the simulated curve is expected to lead by about the memorization time.", "",
          "### Norms, distance to Z, σ_min(J)", "", "![](geometry.png)", "",
          "‖θ − θ'‖ is the distance to the probe's estimate θ' of proj_Z(θ); L(θ') the residual "
          "training loss there; σ_min(J) = √λ_min(JJᵀ) of the n·p training outputs' Jacobian at θ'.",
          ""]
    rows = [[str(r["seed"]), _f(r.get("dist_end"), "{:.4f}"), _f(r.get("sigma_min_end"), "{:.4f}")]
            for r in rl["rows"]]
    L += _table(["seed", "‖θ − θ'‖ at the last probe", "σ_min(J) at the last probe"], rows)
    L += [""] + scaling_section(Path(path).parent)
    from .prediction_text import prediction_section
    L += [""] + prediction_section(Path(path).parent)
    Path(path).write_text("\n".join(L) + "\n")


def scaling_section(out: Path) -> list:
    """The report's pointer to `grokfast reproduce scaling` (the time scale 1/(λη) of Eq. 20),
    quoting its exponent when its report sits in out/scaling."""
    import json
    L = ["### Time to grok against λη", "",
         "Eq. 20 runs in time t = weight_decay · lr · steps, so the theory predicts grok step ∝ "
         "1/(λη) (exponent −1). `grokfast reproduce scaling` tests it on paper-real over weight "
         "decay × lr × seeds: the fitted exponent with its interval over seeds, the collapse "
         "grok step × λη, and where the law breaks."]
    summary = out / "scaling" / "summary.json"
    if summary.is_file():
        f = json.loads(summary.read_text())["fit"]
        L += ["", f"Measured ([scaling/report.md](scaling/report.md)): exponent {f['slope']:.3f} "
              f"(95 % interval over seeds {f['lo']:.3f} … {f['hi']:.3f}) against the theory's −1."]
    else:
        L += ["", f"Not run yet for this directory: `grokfast reproduce scaling --out "
              f"{out / 'scaling'}` writes [scaling/report.md](scaling/report.md) (the link "
              f"then works; rerunning `reproduce paper` quotes its exponent here)."]
    return L


# ---------------------------------------------------------------------------- entry points
def reproduce_paper(out, quick: bool = False, seeds: Optional[int] = None,
                    sim_steps: Optional[int] = None, real_steps: Optional[int] = None,
                    probe_every: Optional[int] = None, backend: str = "auto",
                    log=print) -> Path:
    """Run the experiments of `Budget` and write figures, raw results and report.md into `out`."""
    import json

    b = make_budget(quick, seeds, sim_steps, real_steps, probe_every)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    def stage(name, fn):
        log(f"[reproduce] {name} …")
        t0 = time.perf_counter()
        res = fn()
        timings[name] = time.perf_counter() - t0
        log(f"[reproduce] {name}: {timings[name]:.1f} s")
        return res

    sim = stage("simulation (paper-sim)", lambda: run_simulation(b))
    sim.save(out / "sim")
    euler = stage("Euler step check (η and η/10)", lambda: run_euler_check(b))
    real = stage("training with the probe (paper-real)", lambda: run_real(b, backend))
    real.save(out / "real")
    shared = stage("simulation from paper-real's init", lambda: run_shared(b))
    shared.save(out / "shared_sim")
    sums = {"sim": summarize_simulation(sim), "fourier": summarize_fourier(sim),
            "real": summarize_real(real), "shared": summarize_shared(shared, real), "euler": euler}

    def figures():
        plot_simulation(sim, out / "fig6_simulation.png")
        plot_fourier(sim, out / "fig6_fourier.png")
        plot_fourier_time(sim, out / "fig6_fourier_time.png")
        plot_alignment(real, out / "fig5_alignment.png")
        plot_shared(shared, real, out / "shared_time.png")
        plot_geometry(shared, real, out / "geometry.png")

    stage("figures", figures)
    timings["total"] = sum(timings.values())
    (out / "summary.json").write_text(json.dumps({"budget": asdict(b), "timings": timings, **sums},
                                                 indent=2, default=_json_default))
    write_report(out / "report.md", b, sim, real, shared, sums, timings, backend)
    log(f"[reproduce] wrote {out / 'report.md'} ({timings['total']:.0f} s)")
    return out


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)


def configure_parser(p) -> None:
    """Arguments of `grokfast reproduce` (called by grokfast.cli)."""
    p.add_argument("what", choices=["paper", "scaling", "prediction"], help="what to reproduce: "
                   "paper (Fig. 5, Fig. 6 and more), scaling (grok step against λη, "
                   "grokfast.scaling) or prediction (Eq. 20's grok step model by model, "
                   "grokfast.prediction)")
    p.add_argument("--quick", action="store_true",
                   help="paper: 2 seeds, 3000 Euler steps, 50k GD steps: about 1.5 minutes on 2 "
                        "CPU cores (full mode: 5 seeds, 5000 / 100k steps, about 5 minutes); "
                        "scaling: λη over 4× with 16k steps (grokfast.scaling)")
    p.add_argument("--out", help="output directory (default runs/reproduce-WHAT-TIME)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N−1 (paper: both experiments)")
    p.add_argument("--sim-steps", type=int, metavar="N", help="Euler steps of paper-sim")
    p.add_argument("--real-steps", type=int, metavar="N", help="GD steps of paper-real")
    p.add_argument("--probe-every", type=int, metavar="N", help="probe every N GD steps")
    p.add_argument("--backend", default="auto", help="training backend: auto | triton | torch | "
                                                     "reference")
    p.add_argument("--steps", type=int, metavar="N", help="scaling, prediction: GD steps at most per model")
    p.add_argument("--weight-decays", metavar="A,B,…", help="scaling, prediction: the weight decays swept")
    p.add_argument("--lrs", metavar="A,B,…", help="scaling, prediction: the learning rates swept")
    p.add_argument("--report-only", action="store_true", help="scaling, prediction: rewrite summary, figures "
                   "and report of the finished run in --out (no training)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    if args.what in ("scaling", "prediction"):
        unused = [f"--{n.replace('_', '-')}" for n in ("sim_steps", "real_steps", "probe_every")
                  if getattr(args, n) is not None]
        if unused:
            raise GrokfastError(f"{', '.join(unused)}: options of `reproduce paper`; {args.what} "
                                f"takes --steps, --seeds, --weight-decays, --lrs")
        if args.what == "prediction":
            from .prediction import cmd_prediction
            return cmd_prediction(args)
        from .scaling import cmd_scaling
        return cmd_scaling(args)
    unused = [f"--{n.replace('_', '-')}" for n in ("steps", "weight_decays", "lrs")
              if getattr(args, n) is not None] + (["--report-only"] if args.report_only else [])
    if unused:
        raise GrokfastError(f"{', '.join(unused)}: options of `reproduce scaling` and "
                            f"`reproduce prediction`")
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-paper-{time.strftime('%Y%m%d-%H%M%S')}"
    reproduce_paper(out, quick=args.quick, seeds=args.seeds, sim_steps=args.sim_steps,
                    real_steps=args.real_steps, probe_every=args.probe_every, backend=args.backend)
    return 0
