"""Figures and report.md of `grokfast reproduce scaling` (grokfast.reproduce.scaling)."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from grokfast.config import Config
from grokfast.plotting import pyplot

from .report import number as _f
from .report import save_png, write_text

THEORY_EXPONENT = -1.0
# |median collapse / reference − 1| above this marks a cell where the law breaks
COLLAPSE_TOLERANCE = 0.3


# ---------------------------------------------------------------------------------------- figures
class _Figure:
    """One scaling figure: seeds' dots coloured by lr and shaped by weight decay, ▲ marks."""

    def __init__(self, table, size):
        plt = self.plt = pyplot()
        self.wds = sorted({r["weight_decay"] for r in table})
        self.lrs = sorted({r["lr"] for r in table})
        self.mk = {wd: m for wd, m in zip(self.wds, "os^Dvp<>h*")}
        self.fig, self.ax = plt.subplots(figsize=size)
        self.table = table
        # a log y axis needs a positive value: none when no model grokked (▲ marks only)
        self.yscale = "log" if any(r["grok_step"] for r in table) else "linear"

    def color(self, lr) -> str:
        return f"C{self.lrs.index(lr)}"

    def seeds(self, x_of, y_of) -> None:
        for r in self.table:
            if r["grok_step"] is not None:
                le = r["weight_decay"] * r["lr"]
                self.ax.scatter(x_of(le), y_of(r["grok_step"], le), marker=self.mk[r["weight_decay"]],
                                s=14, alpha=0.35, color=self.color(r["lr"]), lw=0)

    def never(self, x, c: dict) -> None:
        if c["grokked"] < c["n"]:
            t = self.ax.get_xaxis_transform()
            color = self.color(c["lr"])
            k = self.lrs.index(c["lr"])  # one row per lr: cells of equal λη do not overlap
            self.ax.scatter(x, 0.97 - 0.1 * k, marker="^", transform=t, s=30, facecolors="none",
                            color=color)
            self.ax.text(x, 0.92 - 0.1 * k, f"{c['n'] - c['grokked']}/{c['n']}", transform=t,
                         fontsize=7, ha="center", va="top", color=color)

    def finish(self, path, title: str, xs: Sequence[float]) -> None:
        self.ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)  # cells without a grokked model included
        for lr in self.lrs:
            self.ax.scatter([], [], color=self.color(lr), label=f"lr = {lr:g}")
        for wd in self.wds:
            self.ax.scatter([], [], marker=self.mk[wd], color="gray", label=f"weight decay {wd:g}")
        self.ax.set_title(title, fontsize=8)
        self.ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        self.fig.tight_layout()
        save_png(self.fig, path)
        self.plt.close(self.fig)


def plot_grok_step(table, s: dict, path) -> None:
    """Grok step against 1/(λη): every grokked model, cell medians, the fit and slope 1."""
    F = _Figure(table, (8.6, 4.8))
    ax = F.ax
    F.seeds(lambda le: 1 / le, lambda g, le: g)
    for c in s["cells"]:
        x = 1 / c["lam_eta"]
        if math.isfinite(c["median"]):
            ax.scatter(x, c["median"], marker=F.mk[c["weight_decay"]], s=60,
                       color=F.color(c["lr"]), edgecolor="black", zorder=3)
        F.never(x, c)
    f = s["fit"]
    xs = np.array(sorted({1 / c["lam_eta"] for c in s["cells"]}))
    if math.isfinite(f["slope"]):
        ax.plot(xs, f["prefactor"] * xs ** (-f["slope"]), "k-", lw=1,
                label=f"fit: exponent {f['slope']:.2f} [{f['lo']:.2f}, {f['hi']:.2f}]")
    ref = s["collapse_reference"]
    if ref:
        ax.plot(xs, ref * xs, "k--", lw=1,
                label=f"theory: grok step = T*/(λη), T* = {ref:.2f} (smallest-λη median)")
    ax.set(xscale="log", yscale=F.yscale, xlabel="1 / (weight_decay · lr)",
           ylabel="grok step (test acc ≥ 0.99)")
    F.finish(path, "paper-real: time to grok against 1/(λη); dots: seeds, large: cell medians; "
                   "▲ never grokked/seeds", [1 / c["lam_eta"] for c in s["cells"]])


def plot_collapse(table, s: dict, path) -> None:
    """grok step × λη against λη: the flow time to grok, flat where the law holds."""
    F = _Figure(table, (8.6, 4.6))
    ax = F.ax
    F.seeds(lambda le: le, lambda g, le: g * le)
    for c in s["cells"]:
        if math.isfinite(c["collapse_median"]):
            up = c["collapse_q75"] - c["collapse_median"] if math.isfinite(c["collapse_q75"]) else 0
            ax.errorbar(c["lam_eta"], c["collapse_median"],
                        yerr=[[c["collapse_median"] - c["collapse_q25"]], [up]],
                        marker=F.mk[c["weight_decay"]], ms=8, color=F.color(c["lr"]), mec="black",
                        capsize=3)
        F.never(c["lam_eta"], c)
    ref = s["collapse_reference"]
    if ref:
        ax.axhline(ref, color="black", ls="--", lw=1, label=f"smallest-λη median T* = {ref:.2f}")
        ax.axhspan(ref * (1 - COLLAPSE_TOLERANCE), ref * (1 + COLLAPSE_TOLERANCE), color="gray",
                   alpha=0.12, label=f"±{COLLAPSE_TOLERANCE:.0%}")
    ax.set(xscale="log", yscale=F.yscale, xlabel="λη = weight_decay · lr",
           ylabel="grok step × λη (flow time to grok)")
    F.finish(path, "collapse: flat where grok step ∝ 1/(λη); medians with interquartile bars; "
                   "▲ never grokked/seeds", [c["lam_eta"] for c in s["cells"]])


# ---------------------------------------------------------------------------------------- report
def _interval(f: dict) -> str:
    if not math.isfinite(f.get("slope", float("nan"))):
        return "not measurable (fewer than two λη values with a grokked model)"
    ci = f" (95 % interval over seeds {f['lo']:.3f} … {f['hi']:.3f})" if math.isfinite(
        f.get("lo", float("nan"))) else ""
    return f"{f['slope']:.3f}{ci}, {f['n_points']} models of {f['n_seeds']} seeds"


def write_report(path, b, s: dict, base: Config) -> None:
    """report.md: the setting, the exponent, the collapse, where it breaks, the speed."""
    L = _setting(b, s, base) + _exponent(b, s) + _collapse(b, s) + _verdict_and_speed(b, s)
    write_text(path, "\n".join(L) + "\n")


def _setting(b, s: dict, base: Config) -> list:
    products = b.products
    L = [f"# Time to grok against λη — `grokfast reproduce scaling` ({b.mode} mode)", "",
         "The flow of Eq. 20 runs in time t = weight_decay · lr · steps (torch's weight-decay "
         "convention; 2λη in the paper's L + λ‖θ‖²). If grokking is that flow, the flow time to "
         "grok T* is the same for every weight decay and lr, so the grok step is T*/(λη): "
         "**exponent −1**, and grok step × λη collapses to one value.", "",
         "## Setting", "",
         f"- paper-real (App. D): p = {base.p}, width {base.width}, ReLU, MSE (mean), full-batch "
         f"GD, {base.n_train} train / {base.n_pairs - base.n_train} test pairs, torch init.",
         f"- weight decay {', '.join(f'{v:g}' for v in b.weight_decays)} × lr "
         f"{', '.join(f'{v:g}' for v in b.lrs)}: λη from {min(products):g} to {max(products):g} "
         f"({max(products) / min(products):g}×), seeds 0–{b.seeds - 1} (initialization; one "
         f"split), {b.steps} steps at most, stop_at grok (test accuracy ≥ 0.99 on 3 evaluations "
         f"in a row), statistics every {b.log_every} steps (the resolution of a grok step).",
         "- grok step: first evaluation with test accuracy ≥ 0.99. The sweep is in `sweep/` "
         "(results.csv, phase diagram, time-to-grok plots); `alone/` holds the same models "
         "trained one launch each.", ""]
    return L


def _exponent(b, s: dict) -> list:
    f = s["fit"]
    L = []
    L += ["## The exponent", "", "![](scaling_grok_step.png)", "",
          "| fit | exponent of grok step against λη |", "|---|---|",
          f"| theory (Eq. 20 time scale) | {THEORY_EXPONENT:g} |",
          f"| every grokked model, one intercept per seed | {_interval(f)} |",
          f"| every grokked model, pooled (one intercept) | {_f(f.get('pooled'), '{:.3f}')} |",
          f"| cells where the law holds (below) | {_interval(s['fit_law_cells'])} |",
          f"| cell medians (censored) | {_f(s['fit_medians'].get('slope'), '{:.3f}')} |",
          f"| grok step − memorization step | {_interval(s['fit_gap'])} |"]
    L += [f"| weight decay {float(k):g} fixed, over lr (η alone) | {_interval(v)} |"
          for k, v in s["fit_by_weight_decay"].items()]
    L += [f"| lr {float(k):g} fixed, over weight decay (λ alone) | {_interval(v)} |"
          for k, v in s["fit_by_lr"].items()]
    L += ["", "The theory predicts −1 in every row: the flow time depends on λ and η only through "
          "λη. A fixed weight decay varies η alone, a fixed lr varies λ alone. The row \"cells "
          "where the law holds\" is selected by the collapse itself, so it is a description, not "
          "a test; the tests are the other rows, the equal-λη pairs and the local exponents "
          "below.", ""]
    local = local_exponents(s["cells"], b)
    if local:
        L += ["Local exponents of the median grok step between neighbouring weight decays (lr "
              "fixed; λ alone) and neighbouring learning rates (weight decay fixed; η alone):", "",
              "| varied | fixed | from → to | exponent |", "|---|---|---|---|"]
        L += [f"| {v} | {fx} | {a:g} → {c:g} | {e:.2f} |" for v, fx, a, c, e in local] + [""]
    if f["per_seed"]:
        vals = list(f["per_seed"].values())
        L += [f"Per-seed exponents: {', '.join(f'{k}: {v:.3f}' for k, v in f['per_seed'].items())} "
              f"(median {np.median(vals):.3f}, range {min(vals):.3f} … {max(vals):.3f}).", ""]
    return L


def _collapse(b, s: dict) -> list:
    L = []
    L += ["## The collapse grok step × λη", "", "![](scaling_collapse.png)", ""]
    header = ["weight decay", "lr", "λη", "grokked", "median grok step", "IQR",
              "median grok step × λη", "IQR × λη", "vs reference", "median memorization",
              "phase", "law holds"]
    L += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in s["cells"]:
        dev = c["collapse_deviation"]
        L.append("| " + " | ".join([
            f"{c['weight_decay']:g}", f"{c['lr']:g}", f"{c['lam_eta']:g}",
            f"{c['grokked']}/{c['n']}", _f(c["median"], "{:.0f}"),
            f"{_f(c['q25'], '{:.0f}')}–{_f(c['q75'], '{:.0f}')}", _f(c["collapse_median"], "{:.2f}"),
            f"{_f(c['collapse_q25'], '{:.2f}')}–{_f(c['collapse_q75'], '{:.2f}')}",
            "—" if dev is None else f"{dev:+.0%}", _f(c["median_memorization"], "{:.0f}"),
            c["phase"] or "—", "yes" if c["law_holds"] else "no"]) + " |")
    L += ["", f"Reference T*: the median grok step × λη of the smallest λη whose median grokked "
          f"({_f(s['collapse_reference'], '{:.2f}')}). \"Law holds\": the cell's median grok "
          f"step × λη (more than half its seeds grokked) is within ±{COLLAPSE_TOLERANCE:.0%} of "
          f"it. Medians and IQR (interquartile range over seeds) count a seed that never grokked "
          f"as +∞ (— when that decides them).", ""]
    return L


def _verdict_and_speed(b, s: dict) -> list:
    t = s["timing"]
    L = []
    L += ["## Where the law holds and where it breaks", ""] + _verdict(s, b) + [""]
    L += ["## Speed: the sweep against the same models one launch each", ""]
    line = (f"- sweep: {t['launches']} launches (one per weight decay × lr, its {b.seeds} seeds "
            f"batched), {t['sweep_wall']:.1f} s, {t['sweep_model_steps']:,} model-steps done → "
            f"**{t['sweep_rate']:,.0f} model-steps/s**; its launches spanned "
            f"{t['sweep_computed']:,} (a launch carries every model until its last one stops; "
            f"the torch backend's numba path skips the forward and backward of stopped models).")
    L.append(line)
    if "alone_wall" in t:
        same = s["alone_rows_equal"]
        agree = ("**yes**, every row" if not same["differing_rows"] else
                 f"**no**: {same['differing_rows']} of {same['rows']} rows differ, in "
                 f"{', '.join(same['differing_columns'])} — a batched model is not bitwise the "
                 f"model alone on this CPU (the torch backend's batch invariance; see its tests)")
        L += [f"- one launch each: {t['alone_launches']} launches, {t['alone_wall']:.1f} s → "
              f"**{t['alone_rate']:,.0f} model-steps/s**. Ratio: **{t['speedup']:.2f}×**, "
              f"measured in this run on the same machine (wall times of the training loops and "
              f"tables, without the figures).",
              f"- the two tables agree (all columns but launch and wall time): {agree}."]
    return L


def local_exponents(cells: Sequence[dict], b) -> list:
    """(varied, fixed, a, b, log(median_b / median_a) / log(b / a)) between neighbouring values of
    one axis, the other fixed, where both cell medians exist."""
    med = {(c["weight_decay"], c["lr"]): c["median"] for c in cells}
    out = []
    for name, values, others, key in (("weight decay", b.weight_decays, b.lrs,
                                       lambda v, o: (v, o)),
                                      ("lr", b.lrs, b.weight_decays, lambda v, o: (o, v))):
        other = "lr" if name == "weight decay" else "weight decay"
        for o in others:
            for v0, v1 in zip(values, values[1:]):
                m0, m1 = med.get(key(v0, o), math.nan), med.get(key(v1, o), math.nan)
                if math.isfinite(m0) and math.isfinite(m1):
                    out.append((name, f"{other} {o:g}", v0, v1, math.log(m1 / m0) / math.log(v1 / v0)))
    return out


def _pair(c: dict) -> str:
    return f"({c['weight_decay']:g}, {c['lr']:g})"


def _verdict(s: dict, b) -> list:
    cells = s["cells"]
    f = s["fit"]
    out = []
    if math.isfinite(f["slope"]):
        inside = f["lo"] <= THEORY_EXPONENT <= f["hi"] if math.isfinite(f["lo"]) else False
        out.append(f"- Fitted exponent {f['slope']:.3f} (within seeds) over every grokked model: "
                   f"the theory's −1 "
                   f"is {'inside' if inside else 'outside'} the 95 % interval "
                   f"[{f['lo']:.3f}, {f['hi']:.3f}].")
    for key, what in (("fit_by_weight_decay", "η alone (weight decay fixed)"),
                      ("fit_by_lr", "λ alone (lr fixed)")):
        fits = [(float(k), v) for k, v in s.get(key, {}).items() if math.isfinite(v["slope"])]
        if fits:
            inside = [k for k, v in fits if math.isfinite(v["lo"]) and v["lo"] <= -1 <= v["hi"]]
            out.append(f"- Varying {what}: exponents "
                       + ", ".join(f"{v['slope']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}] at {k:g}"
                                   for k, v in fits)
                       + f"; −1 inside the interval at {len(inside)} of {len(fits)}.")
    hold = [c for c in cells if c["law_holds"]]
    if hold:
        les = sorted({c["lam_eta"] for c in hold})
        out.append(f"- The collapse holds (median grok step × λη within "
                   f"±{COLLAPSE_TOLERANCE:.0%} of {s['collapse_reference']:.2f}) at λη = "
                   f"{', '.join(f'{v:g}' for v in les)}, across weight decay and lr: "
                   f"{', '.join(_pair(c) for c in hold)}.")
    slow = [c for c in cells if c["law_holds"] and c["grokked"] < c["n"]]
    if slow:
        out.append("- Seeds that never grokked within the budget where the law holds: "
                   + ", ".join(f"{c['n'] - c['grokked']} of {c['n']} at {_pair(c)}" for c in slow)
                   + " — slow initializations cut off by the step budget; the median is "
                     "unaffected while more than half grok.")
    pairs = []
    for c, d in itertools.combinations(cells, 2):
        if math.isclose(c["lam_eta"], d["lam_eta"], rel_tol=1e-9) and \
                math.isfinite(c["median"]) and math.isfinite(d["median"]):
            pairs.append(f"{_pair(c)} {c['median']:.0f} vs {_pair(d)} {d['median']:.0f} "
                         f"(ratio {d['median'] / c['median']:.2f})")
    if pairs:
        out.append("- Equal λη from different weight decay and lr — the theory says only the "
                   "product matters; median grok steps: " + "; ".join(pairs) + ".")
    for c in cells:
        if c["law_holds"]:
            continue
        why = []
        if c["grokked"] < c["n"]:
            why.append(f"{c['n'] - c['grokked']} of {c['n']} seeds never grokked within "
                       f"{b.steps} steps (phase: {c['phase']})")
        if c["collapse_deviation"] is not None and abs(c["collapse_deviation"]) > COLLAPSE_TOLERANCE:
            why.append(f"median grok step × λη {c['collapse_median']:.2f} is "
                       f"{c['collapse_deviation']:+.0%} off the reference")
        if c["diverged"]:
            why.append(f"{c['diverged']} diverged")
        if c["errors"]:
            why.append(f"{c['errors']} failed")
        if c["collapse_deviation"] is None and c["grokked"] * 2 <= c["n"]:
            why.append("no median grok step")
        out.append(f"- Breaks at weight decay {c['weight_decay']:g}, lr {c['lr']:g} (λη "
                   f"{c['lam_eta']:g}): " + "; ".join(why or ["seed spread"]) + ".")
    dead = [c for c in cells if c["grokked"] == 0]
    if dead:
        same = [(d, c) for d in dead for c in cells if c["law_holds"] and
                math.isclose(c["lam_eta"], d["lam_eta"], rel_tol=1e-9)]
        note = ""
        if same:
            note = (" The same λη with a smaller weight decay and a larger lr groks on time ("
                    + "; ".join(f"{_pair(d)} never, {_pair(c)} at {c['median']:.0f}"
                                for d, c in same)
                    + "): what breaks there is the small-λ limit of the theory, not the time "
                      "scale λη.")
        out.append(f"- No seed grokked at {', '.join(_pair(c) for c in dead)} (weight decay, lr)."
                   + note)
    out.append(f"- {s['never_grokked']} of {s['n_models']} models never grokked within the budget; "
               f"the fit leaves them out, which biases the exponent toward 0 where slow seeds are "
               f"cut off (the censored cell-median fit is the check).")
    return out
