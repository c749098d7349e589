"""The analysis of `grokfast reproduce prediction` (grokfast.reproduce.prediction): from the run directory to
prediction.csv, summary.json, the figures and report.md. `write_analysis(out)` redoes all of it
from the saved runs (`--report-only`).

Per (weight decay, lr) cell and prediction (from initialization, from memorization):
  ratio      predicted / trained grok step over the models where both grokked: median, q25, q75;
  rank       Spearman ρ between predicted and trained grok steps across the cell's seeds (does the
             theory know which seed groks first?), a model that never grokked ranked last (ties:
             average ranks), with a 95 % interval from resampling seeds (bootstrap);
and overall: the median ratio over every model, ρ averaged over cells with its interval from
resampling seeds (a resampled seed brings its models of every cell), the pooled ρ of the flow
times, the Euler check (the same seeds at half the Euler step), and the decoupling at memorization
(‖W2 − W2*(W1)‖ / ‖W2*(W1)‖, W2* the minimum-norm interpolator of Eq. 20).
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.data import make_dataset
from grokfast.plotting import pyplot as _plt
from grokfast.theory import min_norm_W2

from .report import save_png
from .scaling_report import COLLAPSE_TOLERANCE

PREDICTIONS = (("from_init", "predicted_from_init", "from initialization"),
               ("from_memorization", "predicted_from_memorization", "from memorization"))


# ---------------------------------------------------------------------------------------- statistics
def ranks(values: Sequence[Optional[float]]) -> np.ndarray:
    """Average ranks (1 = smallest), None counted as +∞ (tied last)."""
    v = np.array([np.inf if x is None else float(x) for x in values], dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        tie = v == x
        r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence, y: Sequence) -> float:
    """Spearman's ρ (Pearson on average ranks, None as +∞); NaN when either side is constant."""
    if len(x) < 2:
        return float("nan")
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def bootstrap(stat, groups: Sequence, n_boot: int, level: float = 0.95, rng_seed: int = 0):
    """(lo, hi) of stat(resampled groups) over n_boot resamples of groups with replacement
    (non-finite values skipped), NaN when none is finite."""
    rng = np.random.default_rng(rng_seed)
    vals = [stat([groups[k] for k in rng.choice(len(groups), len(groups), replace=True)])
            for _ in range(n_boot)]
    vals = [v for v in vals if math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


def _ratios(rows, col) -> np.ndarray:
    return np.array([r[col] / r["grok_step"] for r in rows
                     if r[col] is not None and r["grok_step"] is not None], dtype=float)


def _ratio_stats(rows, col) -> dict:
    q = _ratios(rows, col)
    if not len(q):
        return dict(n_both=0, median_ratio=float("nan"), q25=float("nan"), q75=float("nan"),
                    within_2x=float("nan"))
    return dict(n_both=len(q), median_ratio=float(np.median(q)),
                q25=float(np.quantile(q, 0.25)), q75=float(np.quantile(q, 0.75)),
                within_2x=float(np.mean((q >= 0.5) & (q <= 2))))


def _rho(rows, col) -> float:
    return spearman([r[col] for r in rows], [r["grok_step"] for r in rows])


def summarize(rows: Sequence[dict], n_boot: int = 2000) -> dict:
    """cells (per weight decay, lr: counts, ratio statistics and ρ with its interval for each
    prediction), overall (the same over every model, mean within-cell ρ with an interval over
    seeds)."""
    keys = sorted({(r["weight_decay"], r["lr"]) for r in rows})
    by_cell = {k: [r for r in rows if (r["weight_decay"], r["lr"]) == k] for k in keys}
    cells = []
    for (wd, lr), cr in by_cell.items():
        c = dict(weight_decay=wd, lr=lr, lam_eta=wd * lr, n=len(cr),
                 trained_grokked=sum(r["grok_step"] is not None for r in cr),
                 median_memorization=float(np.median([r["memorization_step"] for r in cr
                                                      if r["memorization_step"] is not None]
                                                     or [np.nan])))
        for name, col, _ in PREDICTIONS:
            p = dict(grokked=sum(r[col] is not None for r in cr), **_ratio_stats(cr, col),
                     rho=_rho(cr, col))
            p["rho_lo"], p["rho_hi"] = bootstrap(lambda g, col=col: _rho(g, col), cr, n_boot)
            dev = p["median_ratio"] - 1
            p["holds"] = bool(math.isfinite(dev) and abs(dev) <= COLLAPSE_TOLERANCE)
            c[name] = p
        cells.append(c)
    seeds = sorted({r["seed"] for r in rows})
    by_seed = [[r for r in rows if r["seed"] == s] for s in seeds]
    overall = {}
    for name, col, _ in PREDICTIONS:
        def mean_rho(groups, col=col):
            picked = [r for g in groups for r in g]
            vals = [_rho([r for r in picked if (r["weight_decay"], r["lr"]) == k], col) for k in keys]
            vals = [v for v in vals if math.isfinite(v)]
            return float(np.mean(vals)) if vals else float("nan")
        o = dict(grokked=sum(r[col] is not None for r in rows), **_ratio_stats(rows, col),
                 mean_rho=mean_rho(by_seed))
        o["mean_rho_lo"], o["mean_rho_hi"] = bootstrap(mean_rho, by_seed, n_boot)
        ft = "flow_time_" + name
        o["rho_flow_time"] = spearman([r[ft] for r in rows], [r["flow_time_trained"] for r in rows])
        overall[name] = o
    def seed_order(groups):  # trained against trained: how much of the seed order is the seed's
        per = {k: {} for k in keys}
        for j, g in enumerate(groups):  # j: each resampled copy of a seed apart
            for r in g:
                per[(r["weight_decay"], r["lr"])][j] = r["grok_step"]
        vals = []
        for a, b in itertools.combinations(keys, 2):
            common = sorted(set(per[a]) & set(per[b]))
            vals.append(spearman([per[a][i] for i in common], [per[b][i] for i in common]))
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")
    ceiling = dict(rho=seed_order(by_seed))
    ceiling["lo"], ceiling["hi"] = bootstrap(seed_order, by_seed, n_boot)
    return dict(cells=cells, overall=overall, n_models=len(rows), seeds=seeds,
                trained_grokked=sum(r["grok_step"] is not None for r in rows),
                trained_seed_order=ceiling)


def euler_check(T: Sequence, T_half: Sequence) -> dict:
    """Flow time to grok per seed at the Euler step η and η/2: the simulation's own uncertainty."""
    both = [(a, b) for a, b in zip(T, T_half) if a is not None and b is not None]
    rel = [abs(b / a - 1) for a, b in both]
    return dict(T=list(T), T_half=list(T_half), n_both=len(both),
                median_rel_change=float(np.median(rel)) if rel else float("nan"),
                max_rel_change=float(max(rel)) if rel else float("nan"),
                rho=spearman(T, T_half))


def decoupling(base, snap: dict) -> np.ndarray:
    """Per memorized model: ‖W2 − W2*(W1)‖ / ‖W2*(W1)‖ at its memorization step, W2* = H⁺Y the
    minimum-norm interpolator that Eq. 20 puts in place of the trained W2 (float64)."""
    data = make_dataset(base)
    W1 = torch.from_numpy(snap["W1"]).double()
    W2 = torch.from_numpy(snap["W2"]).double()
    star = min_norm_W2(W1, data.X_train.double(), data.Y_train.double(), base.activation)
    return ((W2 - star).pow(2).sum((-2, -1)).sqrt() / star.pow(2).sum((-2, -1)).sqrt()).numpy()


# ---------------------------------------------------------------------------------------- figures
def plot_scatter(rows: Sequence[dict], path) -> dict:
    """Predicted against trained grok step, log–log, one panel per prediction, the identity line;
    colour = cell. Returns what was drawn, read back from the artists: per panel the (trained,
    predicted) points of each cell and the count left out (a side that never grokked)."""
    plt = _plt()
    keys = sorted({(r["weight_decay"], r["lr"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    drawn = {}
    for ax, (name, col, label) in zip(axes, PREDICTIONS):
        panel = {"cells": {}, "left_out": 0}
        lo, hi = math.inf, 0.0
        for j, (wd, lr) in enumerate(keys):
            pts = [(r["grok_step"], r[col]) for r in rows if (r["weight_decay"], r["lr"]) == (wd, lr)
                   and r["grok_step"] is not None and r[col] is not None]
            panel["left_out"] += sum((r["weight_decay"], r["lr"]) == (wd, lr) for r in rows) - len(pts)
            if not pts:
                continue
            sc = ax.scatter(*zip(*pts), s=18, color=f"C{j}", alpha=0.8,
                            label=f"wd {wd:g}, lr {lr:g} (λη {wd * lr:g})")
            xy = np.asarray(sc.get_offsets(), dtype=float)
            panel["cells"][f"{wd:g},{lr:g}"] = xy.tolist()
            lo, hi = min(lo, xy.min()), max(hi, xy.max())
        if hi > 0:
            line = ax.plot([lo / 1.5, hi * 1.5], [lo / 1.5, hi * 1.5], "k--", lw=1,
                           label="predicted = trained")[0]
            panel["identity"] = np.asarray(line.get_xydata(), dtype=float).tolist()
            ax.set(xscale="log", yscale="log")
        ax.set(xlabel="trained grok step (GD)", ylabel=f"predicted grok step, Eq. 20 {label}")
        ax.set_title(f"{label}; left out (a side never grokked): {panel['left_out']}", fontsize=8)
        drawn[name] = panel
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return drawn


def plot_cells(s: dict, path) -> dict:
    """Per cell against λη: the median ratio predicted / trained with its interquartile bar, and
    Spearman ρ with its bootstrap interval, both predictions. Returns the drawn values, read back
    from the artists (x, y and the bar ends per prediction and panel)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    drawn = {}
    cells = s["cells"]
    for k, (name, _, label) in enumerate(PREDICTIONS):
        shift = 1.04 if k else 1 / 1.04
        ok = [c for c in cells if math.isfinite(c[name]["median_ratio"])]
        x = [c["lam_eta"] * shift for c in ok]
        y = [c[name]["median_ratio"] for c in ok]
        eb = a1.errorbar(x, y, yerr=[[c[name]["median_ratio"] - c[name]["q25"] for c in ok],
                                     [c[name]["q75"] - c[name]["median_ratio"] for c in ok]],
                         fmt="os"[k], capsize=3, color=f"C{k}", label=label)
        d = {"ratio": _errorbar_data(eb)}
        okr = [c for c in cells if math.isfinite(c[name]["rho"])]
        lo = [c[name]["rho"] - c[name]["rho_lo"] if math.isfinite(c[name]["rho_lo"]) else 0
              for c in okr]
        hi = [c[name]["rho_hi"] - c[name]["rho"] if math.isfinite(c[name]["rho_hi"]) else 0
              for c in okr]
        eb = a2.errorbar([c["lam_eta"] * shift for c in okr], [c[name]["rho"] for c in okr],
                         yerr=[lo, hi], fmt="os"[k], capsize=3, color=f"C{k}", label=label)
        d["rho"] = _errorbar_data(eb)
        drawn[name] = d
    xs = [c["lam_eta"] for c in cells]
    for ax in (a1, a2):
        ax.set_xlim(min(xs) / 2, max(xs) * 2)
    a1.axhline(1, color="black", lw=1, ls="--")
    a1.axhspan(1 - COLLAPSE_TOLERANCE, 1 + COLLAPSE_TOLERANCE, color="gray", alpha=0.12)
    a1.set(xscale="log", yscale="log", xlabel="λη = weight_decay · lr",
           ylabel="median predicted / trained grok step (IQR bars)")
    a2.axhline(0, color="black", lw=1)
    a2.set(xscale="log", ylim=(-1.05, 1.05), xlabel="λη = weight_decay · lr",
           ylabel="Spearman ρ across seeds (95 % bootstrap)")
    for ax in (a1, a2):
        ax.legend(fontsize=7)
    a1.set_title("per cell: ratio; grey band ±30 %", fontsize=8)
    a2.set_title("per cell: does the theory know which seed groks first?", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return drawn


def _errorbar_data(eb) -> dict:
    """x, y of an errorbar container's markers and the low / high ends of its bars."""
    x, y = (np.asarray(v, dtype=float) for v in eb.lines[0].get_data())
    segs = eb.lines[2][0].get_segments() if eb.lines[2] else []
    lo = [float(np.asarray(sg)[:, 1].min()) for sg in segs]
    hi = [float(np.asarray(sg)[:, 1].max()) for sg in segs]
    return dict(x=x.tolist(), y=y.tolist(), lo=lo, hi=hi)
