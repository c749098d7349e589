"""The analysis of `grokfast reproduce hierarchy`: from the run directory to hierarchy.csv,
summary.json, hierarchy_ladder.png and report.md (`write_analysis`, also `--report-only`).

Every rung's grok time is written in L0-equivalent GD steps, τ / (weight_decay · lr) with the
model's own (weight decay, lr): for L1/L2 the grok step at lr/k or weight decay/k divided by k, for
the flows the memorization step plus τ_flow / (wd · lr). Per rung: the ratio to L0 over the models
where both grokked (median, quartiles, a 95 % bootstrap interval of the median resampling seeds),
and along the chain L0 → L1 (lr/4) → L2 (wd/4) → L3 → L4 → L5 → L6 the median step-to-step ratio:
the step whose ratio is farthest from 1 is the rung the factor comes from.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from grokfast.errors import GrokfastError
from grokfast.plotting import pyplot as _plt
from grokfast.store.ownership import read_json
from grokfast.store.output import command_output
from grokfast.theory import SimResult
from grokfast.theory.manifold_sim import ManifoldResult

from .hierarchy_budget import COMMAND, budget_of
from .hierarchy_text import write_report
from .prediction import flow_times, prediction_rows
from .prediction_report import bootstrap
from .report import read_npz, save_png, write_json, write_text
from .stages import check_stages, finished_sweep

LEVELS = ("L0", "L1_lr2", "L1_lr4", "L2_wd2", "L2_wd4", "L3", "L4", "L5", "L6")
CHAIN = ("L0", "L1_lr4", "L2_wd4", "L3", "L4", "L5", "L6")
LABELS = {"L0": "L0 trained GD", "L1_lr2": "L1 GD lr/2", "L1_lr4": "L1 GD lr/4",
          "L2_wd2": "L2 GD wd/2", "L2_wd4": "L2 GD wd/4", "L3": "L3 exact manifold flow",
          "L4": "L4 manifold flow, N = 0", "L5": "L5 Eq. 20 from memorization",
          "L6": "L6 Eq. 20 from initialization"}
COLUMNS = ("weight_decay", "lr", "seed", "memorization_step") + LEVELS


def ladder_rows(out: Path) -> list[dict]:
    """One row per trained model (COLUMNS), None where a rung did not grok within its budget."""
    b = budget_of(out)
    swept = finished_sweep(out / "sweep")
    snap = read_npz(out / "memorization.npz")
    T_all = flow_times(SimResult.load(out / "sim"))
    pred = prediction_rows(swept.base, swept.table, snap, T_all[:b.seeds], T_all[b.seeds:])
    flows = {name: dict(zip((int(r) for r in snap["row"]), ManifoldResult.load(out / name).grok_tau()))
             for name in ("manifold", "manifold_n0")}
    gd = read_json(out / "gd.json").get("rows")
    if not isinstance(gd, list):
        raise GrokfastError(f"{out / 'gd.json'} is damaged (no list of rows): restore it, or run "
                            f"the same command again in a new --out")
    rows = []
    for i, (r, p) in enumerate(zip(swept.table, pred)):
        wd, lr, mem = r["weight_decay"], r["lr"], r["memorization_step"]
        row = dict(weight_decay=wd, lr=lr, seed=r["seed"], memorization_step=mem,
                   L0=r["grok_step"], L5=p["predicted_from_memorization"], L6=p["predicted_from_init"])
        for g in gd:
            if (g["weight_decay"], g["lr"], g["seed"]) == (wd, lr, r["seed"]):
                name = f"{g['rung']}_{'lr' if g['rung'] == 'L1' else 'wd'}{g['k']}"
                row[name] = None if g["grok_step"] is None else g["grok_step"] / g["k"]
        for level, name in (("L3", "manifold"), ("L4", "manifold_n0")):
            tau = flows[name].get(i)
            row[level] = None if tau is None else mem + tau / (wd * lr)
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def write_csv(path, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else repr(float(r[c])) if isinstance(r[c], float) else r[c]
                    for c in COLUMNS])
    write_text(path, buf.getvalue())


def _pairs(rows, a, b):
    """(seed, rows[b] / rows[a]) where both grokked."""
    return [(r["seed"], r[b] / r[a]) for r in rows if r[a] and r[b] is not None]


def _median_ci(pairs, n_boot):
    if not pairs:
        return dict(n_both=0, median=float("nan"), q25=float("nan"), q75=float("nan"),
                    lo=float("nan"), hi=float("nan"))
    q = np.array([v for _, v in pairs])
    seeds = sorted({s for s, _ in pairs})
    groups = [[v for s, v in pairs if s == t] for t in seeds]
    lo, hi = bootstrap(lambda gs: float(np.median(np.concatenate(gs))) if gs else float("nan"),
                       groups, n_boot)
    return dict(n_both=len(q), median=float(np.median(q)), q25=float(np.quantile(q, 0.25)),
                q75=float(np.quantile(q, 0.75)), lo=lo, hi=hi)


def horizon(b, r: dict, level: str) -> float:
    """The last L0-equivalent GD step a rung could have grokked at (its budget's end)."""
    rate = r["weight_decay"] * r["lr"]
    mem = r["memorization_step"] or 0
    return {"L3": mem + b.tau_max / rate, "L4": mem + b.tau_max / rate,
            "L5": mem + b.sim_time / rate, "L6": b.sim_time / rate}.get(level, float(b.steps))


def censored(rows, b) -> dict:
    """Per rung: the models that grokked in training (L0) but not on the rung within its budget,
    and the smallest lower bound on their ratio to L0 (horizon / L0)."""
    out = {}
    for lv in LEVELS[1:]:
        bounds = [horizon(b, r, lv) / r["L0"] for r in rows if r["L0"] and r[lv] is None]
        out[lv] = dict(n=len(bounds), ratio_above=min(bounds) if bounds else float("nan"))
    return out


def summarize(rows, n_boot: int, b=None) -> dict:
    cens = censored(rows, b) if b is not None else {}
    levels = {lv: dict(n_grokked=sum(r[lv] is not None for r in rows), n=len(rows),
                       censored=cens.get(lv, dict(n=0, ratio_above=float("nan"))),
                       **_median_ci(_pairs(rows, "L0", lv), n_boot)) for lv in LEVELS}
    steps = []
    for a, b in zip(CHAIN, CHAIN[1:]):
        st = _median_ci(_pairs(rows, a, b), n_boot)
        steps.append(dict(step=f"{a}→{b}", **st))
    finite = [s for s in steps if math.isfinite(s["median"])]
    top = max(finite, key=lambda s: abs(math.log(s["median"]))) if finite else None
    total = levels["L5"]["median"]
    if top is None:
        answer = "no rung step could be measured (too few models grokked on both sides)"
    else:
        share = abs(math.log(top["median"])) / abs(math.log(total)) \
            if math.isfinite(total) and total != 1 else float("nan")
        answer = (f"the largest step of the ladder is {top['step']} (median ratio "
                  f"{top['median']:.3g}, 95 % interval {top['lo']:.3g}–{top['hi']:.3g}); Eq. 20 "
                  f"from memorization against training: {total:.3g}")
        if math.isfinite(share):
            answer += f" (that step is {share:.0%} of its log-factor)"
    late = [f"{lv} did not grok within its budget for {c['n']} of the models L0 grokked "
            f"(ratio > {c['ratio_above']:.3g})" for lv, c in cens.items() if c["n"]]
    if late:
        answer += "; censored: " + "; ".join(late)
    return dict(levels=levels, chain=steps, answer=answer)


def flow_quality(out: Path) -> dict:
    """How well the manifold flows were integrated (largest over models and records)."""
    q = {}
    for name in ("manifold", "manifold_n0"):
        r = ManifoldResult.load(out / name)
        h = r.history
        q[name] = dict(max_train_loss=float(np.nanmax(h["train_loss"])),
                       max_identity_error=float(np.nanmax(h["identity_error"][:, 1:])),
                       median_identity_error=float(np.nanmedian(h["identity_error"][:, 1:])),
                       max_sliding_rounds=(int(np.nanmax(h["sliding_rounds"]))
                                           if "sliding_rounds" in h else None),
                       forced_steps=int(np.nansum(h["forced"])),
                       rejected_steps=int(np.nansum(h["rejected"])),
                       max_sliding=int(np.nanmax(h["n_sliding"])),
                       max_dist_to_Z=float(np.nanmax(h["dist_to_Z"][:, 1:])),
                       min_h=float(np.nanmin(h["h_min_used"])),
                       stopped=[s for s in r.meta["stopped"] if s], wall_time=r.wall_time)
    return q


def plot_ladder(s: dict, path) -> dict:
    """Median ratio to L0 per rung (log scale) with the interquartile band and the bootstrap
    interval; returns what was drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(LEVELS))
    lv = [s["levels"][k] for k in LEVELS]
    med = np.array([d["median"] for d in lv])
    for lo_k, hi_k, kw in (("q25", "q75", dict(lw=8, alpha=0.25, color="C0", label="quartiles")),
                           ("lo", "hi", dict(lw=1.5, color="C3", label="95 % bootstrap (seeds)"))):
        lo, hi = np.array([d[lo_k] for d in lv]), np.array([d[hi_k] for d in lv])
        ax.vlines(x, lo, hi, **kw)
    ax.plot(x, med, "ko", label="median")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set(yscale="log", ylabel="grok time / trained (L0)", xticks=x)
    ax.set_xticklabels([LABELS[k].replace(" ", "\n", 1) for k in LEVELS], fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return dict(levels=list(LEVELS), median=[float(v) for v in med])


def write_analysis(out) -> dict:
    """hierarchy.csv, summary.json, hierarchy_ladder.png and report.md from the runs in out,
    written under the rule of every command's output (--report-only)."""
    with command_output(out, COMMAND, create=False, marker="budget.json") as o:
        return analysis(o)


def analysis(o) -> dict:
    """write_analysis into the held output o."""
    out = o.dir
    b = budget_of(out)
    check_stages(out, ("gd.json", "memorization.npz", "sim", "sim_init_half", "manifold",
                       "manifold_n0"), COMMAND)
    rows = ladder_rows(out)
    write_csv(o.path("hierarchy.csv"), rows)
    s = summarize(rows, b.bootstrap, b)
    s["flow_quality"] = flow_quality(out)
    s["budget"] = read_json(out / "budget.json")
    timing = out / "timing.json"
    s["timing"] = read_json(timing) if timing.is_file() else {}
    s["figure"] = plot_ladder(s, o.path("hierarchy_ladder.png"))
    write_json(o.path("summary.json"), s)
    write_report(o.path("report.md"), b, s)
    return s
