"""The figures of `grokfast reproduce paper` (Fig. 6, Fig. 5 and two beyond the paper)."""
from __future__ import annotations

import numpy as np

from grokfast.plotting import pyplot
from grokfast.theory import sim_time_to_gd_steps

from .report import save_png


def _save(fig, path) -> None:
    """Lay out, write (by rename) and close a figure."""
    fig.tight_layout()
    save_png(fig, path)
    pyplot().close(fig)


def fourier_deviations(sim) -> dict:
    """Per model and recorded step, over all frequencies: mean |ratio − 1|, mean |angle − 90°|, mean
    within- and across-frequency support similarity → name → [n_models, n_rows]."""
    h = sim.history
    with np.errstate(all="ignore"):
        return {"ratio_dev": np.nanmean(np.abs(h["fourier_ratio"] - 1), -1),
                "angle_dev": np.nanmean(np.abs(h["fourier_angle"] - 90), -1),
                "within": np.nanmean(h["fourier_sim_within"], -1),
                "across": np.nanmean(h["fourier_sim_across"], -1)}


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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
