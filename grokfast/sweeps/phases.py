"""Phases of a sweep and its figures: phase diagrams and time-to-grok against each swept axis.

Each model (a results.csv row) is classified from its milestones, within the steps it ran
(memorization_step: first step with training accuracy 1; grok_step: first evaluation with test
accuracy ≥ grok_threshold), with `PhaseRules(comprehension_ratio=R)` (default R = 10):

    comprehension   grokked, and grok_step ≤ R × memorization_step (or grokked without memorizing):
                    generalization comes with memorization, within one decade of steps for R = 10
    grokking        grokked later than R × memorization_step: generalization long after memorizing
    memorization    memorized (training accuracy 1), never grokked
    confusion       never memorized and never grokked (diverged runs usually land here)

Rows of a launch that raised (stop_reason "error") are left out. A cell of the grid (one value
per axis; pooled over the other axes and the seeds) takes the class most of its models have (ties
go to the earlier class in the list above), and shows the fraction that grokked. Its grok step is
the median over its models with a model that never grokked counted as +∞ (so the median exists
when more than half grokked), its spread the interquartile range the same way (×q75/q25).

Figures, written into the sweep directory by `plot_sweep` (matplotlib, Agg):

    phase_<a>__<b>.png      for every pair of swept axes (more than one value each): left, the median
                            grok step on a log colour scale (grey: median not grokked), with the
                            fraction grokked; right, the phase of each cell and the spread q75/q25
    time_to_grok_<a>.png    for every swept axis: grok step against its values (log–log for positive
                            numbers), every seed as a dot, the median and the interquartile band,
                            ▲ at the top for seeds that never grokked; one series per value of the
                            other axis when there is exactly one other (≤ 8 values), else pooled
"""
from __future__ import annotations

import itertools
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from grokfast.errors import GrokfastError
from grokfast.plotting import pyplot

PHASES = ("comprehension", "grokking", "memorization", "confusion")
PHASE_COLORS = {"comprehension": "#1b9e77", "grokking": "#7570b3", "memorization": "#d95f02",
                "confusion": "#999999"}


@dataclass(frozen=True)
class PhaseRules:
    """comprehension_ratio: a grokked model is in comprehension when grok_step ≤ this ×
    memorization_step, else in grokking."""

    comprehension_ratio: float = 10.0

    def __post_init__(self):
        r = self.comprehension_ratio
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r < 1:
            raise GrokfastError(f"comprehension_ratio={r!r} must be a number ≥ 1 (grok_step ≤ "
                                f"ratio × memorization_step counts as comprehension)")

    def describe(self) -> str:
        r = f"{self.comprehension_ratio:g}"
        return (f"comprehension: grokked by {r}× the memorization step; grokking: grokked later; "
                f"memorization: train acc 1, never grokked; confusion: never train acc 1")


def classify(row: dict, rules: Optional[PhaseRules] = None) -> Optional[str]:
    """The phase of one table row (None for a launch error)."""
    rules = rules or PhaseRules()
    if row.get("error") is not None:
        return None
    mem, grok = row.get("memorization_step"), row.get("grok_step")
    if grok is not None:
        if mem is None or grok <= rules.comprehension_ratio * max(mem, 1):
            return "comprehension"
        return "grokking"
    return "memorization" if mem is not None else "confusion"


def censored_quantile(values: Sequence[Optional[float]], q: float) -> float:
    """Quantile q of values with None (never reached) counted as +∞; +∞ when it falls there,
    NaN for no values."""
    v = np.array([np.inf if x is None else float(x) for x in values], dtype=float)
    if v.size == 0:
        return float("nan")
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return float("inf")
    top = finite.max()
    out = float(np.quantile(np.where(np.isfinite(v), v, 2 * top + 1), q))
    return out if out <= top else float("inf")


def cell_stats(rows: Sequence[dict], rules: Optional[PhaseRules] = None) -> dict:
    """n, grokked, median / q25 / q75 grok step (censored), spread q75/q25, phase counts, phase."""
    rows = [r for r in rows if r.get("error") is None]
    grok = [r.get("grok_step") for r in rows]
    phases = [classify(r, rules) for r in rows]
    counts = {p: phases.count(p) for p in PHASES}
    q25, med, q75 = (censored_quantile(grok, q) for q in (0.25, 0.5, 0.75))
    phase = max(PHASES, key=lambda p: (counts[p], -PHASES.index(p))) if rows else None
    spread = q75 / q25 if math.isfinite(q75) and q25 > 0 else float("nan")
    mem = censored_quantile([r.get("memorization_step") for r in rows], 0.5)
    return dict(n=len(rows), grokked=sum(g is not None for g in grok), median=med, q25=q25,
                q75=q75, spread=spread, counts=counts, phase=phase, median_memorization=mem)


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _fmt_step(s: float) -> str:
    if not math.isfinite(s):
        return "—"
    return f"{s:.0f}" if s < 1e4 else f"{s:.2g}".replace("e+0", "e").replace("e+", "e")


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _groups(table: Sequence[dict], names: Sequence[str]) -> dict:
    out: dict[tuple, list] = {}
    for r in table:
        out.setdefault(tuple(r[n] for n in names), []).append(r)
    return out


def summary_lines(result, rules: Optional[PhaseRules] = None) -> list[str]:
    """What `grokfast show DIR` prints for a sweep: status, settings, one line per grid cell."""
    rules = rules or PhaseRules()
    st, b = result.status, result.base
    done = st.get("launches_done", "?")
    rate = st.get("model_steps_per_s")
    n = len(result.plan)
    lines = [f"{result.dir}: sweep {st.get('status', 'unknown')}, {n} launch{'es' if n > 1 else ''} "
             f"({done} done), {len(result.table)} of {result.n_models} models in results.csv"
             + (f", {st['wall_time']:.1f} s, {rate:,.0f} model-steps/s" if rate else ""),
             f"base: p={b.p} {b.operation} {b.pairs} {b.encoding}, width {b.width} {b.activation}, "
             f"{b.loss} ({b.loss_reduction}), {b.optimizer} lr={b.lr:g} wd={b.weight_decay:g}, "
             f"{b.steps} steps; stop_at {result.options.get('stop_at')}",
             "swept: " + (", ".join(f"{k} = {', '.join(_fmt_value(v) for v in vs)}"
                                    for k, vs in result.axes.items()) or "seeds only")
             + f"; seeds {result.seeds}",
             f"phases: {rules.describe()}", ""]
    names = list(result.axes)
    header = [*names, "grokked", "median grok", "IQR", "median memorized", "phase"]
    body = []
    for key, rows in _groups(result.table, names).items():
        s = cell_stats(rows, rules)
        iqr = f"{_fmt_step(s['q25'])}–{_fmt_step(s['q75'])}" if math.isfinite(s["q25"]) else "—"
        body.append([*(_fmt_value(v) for v in key), f"{s['grokked']}/{s['n']}",
                     _fmt_step(s["median"]), iqr, _fmt_step(s["median_memorization"]),
                     s["phase"] or "error"])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    for r in result.table:
        if r.get("error"):
            lines.append(f"error in {r['launch']}: {r['error']}")
            break
    stops = sorted({r["stop_reason"] for r in result.table if r.get("stop_reason")})
    if stops:
        lines.append(f"stop reasons: {', '.join(stops)}")
    if st.get("status") == "running":  # live: its writer holds sweep.lock
        lines.append(f"still running: wait for it to end (or stop it: Ctrl-C where it runs, or "
                     f"kill its pid, in {result.dir / 'sweep.lock'}); then `grokfast sweep "
                     f"--resume {result.dir}` continues it if it stopped early")
    elif st.get("status") != "finished":
        lines.append(f"continue it with `grokfast sweep --resume {result.dir}`")
    return lines


# ---------------------------------------------------------------------------------------- figures
def plot_sweep(result, rules: Optional[PhaseRules] = None) -> list[Path]:
    """Every phase diagram and time-to-grok figure of a sweep, into its directory."""
    rules = rules or PhaseRules()
    axes = [a for a, vs in result.axes.items() if len(vs) > 1]
    paths = []
    for a, b in itertools.combinations(axes, 2):
        path = result.dir / f"phase_{a}__{b}.png"
        plot_phase_diagram(result, a, b, path, rules)
        paths.append(path)
    for a in axes:
        path = result.dir / f"time_to_grok_{a}.png"
        plot_time_to_grok(result, a, path)
        paths.append(path)
    return paths


def plot_phase_diagram(result, a: str, b: str, path, rules: PhaseRules) -> None:
    """Median grok step and phase over the (a, b) grid (a on the vertical axis)."""
    from matplotlib.colors import LogNorm, to_rgb
    from matplotlib.patches import Patch
    plt = pyplot()
    va, vb = result.axes[a], result.axes[b]
    cells = _groups(result.table, [a, b])
    stats = {(i, j): cell_stats(cells[(x, y)], rules)
             for i, x in enumerate(va) for j, y in enumerate(vb) if (x, y) in cells}
    medians = [s["median"] for s in stats.values() if math.isfinite(s["median"])]
    lo, hi = (min(medians), max(medians)) if medians else (1.0, 10.0)
    norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    cmap = plt.get_cmap("viridis")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.0 + 2.0 * len(vb), 3.2 + 0.6 * len(va)))
    img = np.ones((len(va), len(vb), 3))
    phase_img = np.ones((len(va), len(vb), 3))
    for (i, j), s in stats.items():
        if s["n"] == 0:
            continue
        img[i, j] = cmap(norm(s["median"]))[:3] if math.isfinite(s["median"]) else (0.82,) * 3
        phase_img[i, j] = to_rgb(PHASE_COLORS[s["phase"]])
    for ax, im in ((ax1, img), (ax2, phase_img)):
        ax.imshow(im, origin="lower", aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(vb)), [_fmt_value(v) for v in vb])
        ax.set_yticks(range(len(va)), [_fmt_value(v) for v in va])
        ax.set(xlabel=b, ylabel=a)
    for (i, j), s in stats.items():
        if s["n"] == 0:
            continue
        dark = math.isfinite(s["median"]) and norm(s["median"]) < 0.6
        ax1.text(j, i, f"{_fmt_step(s['median'])}\n{s['grokked']}/{s['n']}", ha="center",
                 va="center", fontsize=8, color="white" if dark else "black")
        spread = f"\n×{s['spread']:.2g}" if math.isfinite(s["spread"]) else ""
        ax2.text(j, i, f"{s['phase']}\n{s['grokked']}/{s['n']}{spread}", ha="center",
                 va="center", fontsize=7)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax1, label="median grok step (grey: not grokked)")
    ax1.set_title("median grok step, grokked/seeds", fontsize=9)
    ax2.set_title("phase, grokked/seeds, spread q75/q25", fontsize=9)
    ax2.legend(handles=[Patch(color=PHASE_COLORS[p], label=p) for p in PHASES], fontsize=7,
               loc="upper left", bbox_to_anchor=(1.01, 1.0))
    others = [x for x in result.axes if x not in (a, b) and len(result.axes[x]) > 1]
    pooled = f" (pooled over {', '.join(others)})" if others else ""
    fig.suptitle(f"{a} × {b}{pooled}, seeds {_seed_text(result.seeds)}\n"
                 + "\n".join(textwrap.wrap(rules.describe(), 120)), fontsize=8)
    fig.tight_layout()
    from grokfast.store.history import save_figure
    save_figure(fig, path)
    plt.close(fig)


def _seed_text(seeds) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def plot_time_to_grok(result, a: str, path) -> None:
    """Grok step against the values of axis a: seeds, median, interquartile band, never grokked."""
    plt = pyplot()
    values = result.axes[a]
    numeric = _numeric(values) and all(v > 0 for v in values)
    xpos = {v: (v if numeric else k) for k, v in enumerate(values)}
    others = [x for x in result.axes if x != a and len(result.axes[x]) > 1]
    series = [(None, result.table)]
    if len(others) == 1 and len(result.axes[others[0]]) <= 8:
        o = others[0]
        series = [(f"{o}={_fmt_value(v)}", [r for r in result.table if r[o] == v])
                  for v in result.axes[o]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    top = ax.get_xaxis_transform()
    any_grok = False
    for k, (label, rows) in enumerate(series):
        color = f"C{k}"
        cells = _groups([r for r in rows if r.get("error") is None], [a])
        xs, med, q25, q75 = [], [], [], []
        for v in values:
            rs = cells.get((v,), [])
            if not rs:
                continue
            x = xpos[v]
            grok = [r["grok_step"] for r in rs]
            pts = [g for g in grok if g is not None]
            any_grok = any_grok or bool(pts)
            ax.scatter([x] * len(pts), pts, s=10, alpha=0.35, color=color, lw=0)
            missed = len(grok) - len(pts)
            if missed:
                ax.scatter([x], [0.97], marker="^", transform=top, color=color, s=28,
                           facecolors="none")
                ax.text(x, 0.92, f"{missed}", transform=top, fontsize=7, color=color,
                        ha="center")
            s = [censored_quantile(grok, q) for q in (0.5, 0.25, 0.75)]
            xs.append(x)
            med.append(s[0])
            q25.append(s[1])
            q75.append(s[2])
        med, q25, q75 = (np.array(t, dtype=float) for t in (med, q25, q75))
        ok = np.isfinite(med)
        xs = np.array(xs, dtype=float)
        ax.plot(xs[ok], med[ok], "o-", color=color, label=label or "median over seeds", ms=4)
        band = np.isfinite(q25) & np.isfinite(q75)
        ax.fill_between(xs[band], q25[band], q75[band], color=color, alpha=0.18, lw=0)
    if numeric:
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 1.3, max(values) * 1.3)
    else:
        ax.set_xticks(range(len(values)), [_fmt_value(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_yscale("log")
    if not any_grok:
        ax.set_ylim(1, max(result.base.steps, 10))
        ax.text(0.5, 0.5, "no model grokked", transform=ax.transAxes, ha="center")
    ax.set(xlabel=a, ylabel="grok step (first test acc ≥ threshold)",
           title=f"time to grok against {a}: seeds (dots), median and interquartile band; "
                 f"▲ n: seeds never grokked", )
    ax.title.set_fontsize(8)
    if others and len(series) == 1:
        ax.text(0.01, 0.01, f"pooled over {', '.join(others)}", transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from grokfast.store.history import save_figure
    save_figure(fig, path)
    plt.close(fig)
