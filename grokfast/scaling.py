"""`grokfast reproduce scaling`: the paper's time scale tested — the grok step against λη.

Eq. 20 (PAPER.md, "Decoupled dynamics and the closed form") runs in flow time t with one unit
= 1/(2λη) GD steps under the paper's L + λ‖θ‖², i.e. t = weight_decay · lr · steps in torch's
convention (weight_decay = 2λ). If grokking is that flow, the flow time to grok T* does not depend
on weight decay or lr, so

    grok_step = T* / (weight_decay · lr)       — exponent −1 of the grok step against λη,

and grok_step × weight_decay × lr collapses to T* for every (weight decay, lr).

    grokfast reproduce scaling [--quick] [--out DIR] [--seeds N] [--steps N]
                               [--weight-decays A,B,…] [--lrs A,B,…] [--backend B]
    grokfast reproduce scaling --report-only --out DIR   # the analysis again, no training

sweeps paper-real over weight_decay × lr × seeds with stop_at="grok" (DIR/sweep, one launch per
(weight_decay, lr), its seeds batched), trains the same models again one launch each
(DIR/alone: the speed comparison, and a check that the rows agree), and writes:

  scaling_grok_step.png   grok step against 1/(λη) per seed, the cell medians, the fit, slope 1
  scaling_collapse.png    grok step × λη against λη (flat where the law holds)
  report.md               the fitted exponent with its bootstrap interval beside −1, where the law
                          holds and where it breaks, the collapse values, timings
  summary.json            every number of the report

The fit: least squares of log(grok step) on log(λη) over every model that grokked, with one
intercept per seed (a seed's own flow time to grok cancels: slow seeds cut off at small λη do not
tilt the slope); the 95 % interval by resampling seeds with replacement (2000 resamples; a
resampled seed brings all its models); also the pooled slope and per-seed slopes. Models that never grok within the steps are left out of the fit and
reported per cell; a fit on the cell medians (censored: a model that never grokked counts as +∞)
is given too. Full mode: weight decay 1e-4 … 1.6e-3 × lr 1, 2 (λη 1e-4 … 3.2e-3, 32×), 8 seeds,
60 000 steps. --quick: weight decay 2e-4, 4e-4 × lr 2, 4 (λη 4e-4 … 1.6e-3, 4×), 8 seeds,
16 000 steps. Run times: see the README (measured).
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .config import Config
from .errors import GrokfastError

THEORY_EXPONENT = -1.0
# |median collapse / reference − 1| above this marks a cell where the law breaks
COLLAPSE_TOLERANCE = 0.3


@dataclass
class ScalingBudget:
    weight_decays: tuple = (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3)
    lrs: tuple = (1.0, 2.0)
    seeds: int = 8
    steps: int = 60_000
    log_every: int = 100
    bootstrap: int = 2000
    mode: str = "full"

    @property
    def products(self) -> list:
        return sorted({wd * lr for wd in self.weight_decays for lr in self.lrs})


def make_budget(quick: bool = False, seeds: Optional[int] = None, steps: Optional[int] = None,
                weight_decays: Optional[Sequence[float]] = None,
                lrs: Optional[Sequence[float]] = None) -> ScalingBudget:
    b = ScalingBudget(weight_decays=(2e-4, 4e-4), lrs=(2.0, 4.0), steps=16_000,
                      mode="quick") if quick else ScalingBudget()
    return override(b, seeds, steps, weight_decays, lrs)


def override(b, seeds: Optional[int] = None, steps: Optional[int] = None,
             weight_decays: Optional[Sequence[float]] = None, lrs: Optional[Sequence[float]] = None):
    """b (any budget with seeds, steps, log_every, weight_decays, lrs, mode) with the command
    line's overrides applied and checked (GrokfastError saying what to give)."""
    if any(v is not None for v in (seeds, steps, weight_decays, lrs)):
        b.mode += ", overridden"
    if seeds is not None:
        if seeds < 2:
            raise GrokfastError(f"--seeds {seeds}: the interval over seeds needs at least 2")
        b.seeds = seeds
    if steps is not None:
        if steps < 1:
            raise GrokfastError(f"--steps {steps}: must be ≥ 1")
        b.steps = steps
        b.log_every = max(1, min(b.log_every, steps // 20))
    for name, values in (("weight_decays", weight_decays), ("lrs", lrs)):
        if values is not None:
            values = tuple(float(v) for v in values)
            if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
                raise GrokfastError(f"--{name.replace('_', '-')}: give positive numbers")
            setattr(b, name, values)
    return b


def base_config(b: ScalingBudget) -> Config:
    return Config.preset("paper-real", steps=b.steps, log_every=b.log_every,
                         eval_every=b.log_every)


# ---------------------------------------------------------------------------------------- fit
def fit_exponent(x: np.ndarray, y: np.ndarray) -> float:
    """Slope of log y on log x (least squares)."""
    lx, ly = np.log(x), np.log(y)
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def within_seed_exponent(groups: Sequence[np.ndarray]) -> float:
    """The common slope of log y on log x with one intercept per seed (seed fixed effects):
    each seed's (λη, grok step) points centred on its own means, then one least-squares slope.
    A seed's own flow time T*_s cancels, so seeds cut off at small λη (slow ones) do not tilt
    the slope as they do in a pooled fit. NaN when no seed has two distinct λη."""
    num = den = 0.0
    for pts in groups:
        lx, ly = np.log(pts[:, 0]), np.log(pts[:, 1])
        lx = lx - lx.mean()
        num += float((lx * (ly - ly.mean())).sum())
        den += float((lx * lx).sum())
    return num / den if den > 0 else float("nan")


def fit_with_interval(points: Sequence[tuple], n_boot: int = 2000, level: float = 0.95,
                      rng_seed: int = 0) -> dict:
    """points: (seed, λη, grok_step) of every grokked model. slope: the within-seed exponent
    (within_seed_exponent); lo, hi: its interval from resampling seeds with replacement (a
    resampled seed brings all its points); pooled: one least-squares slope over all points;
    per_seed: each seed's own slope (seeds with ≥ 2 distinct λη)."""
    seeds = sorted({p[0] for p in points})
    by_seed = {s: np.array([(p[1], p[2]) for p in points if p[0] == s], dtype=float)
               for s in seeds}
    allp = np.array([(p[1], p[2]) for p in points], dtype=float).reshape(-1, 2)
    out = dict(n_points=len(allp), n_seeds=len(seeds), slope=float("nan"), lo=float("nan"),
               hi=float("nan"), pooled=float("nan"), per_seed={})
    if len(allp) < 2 or len(np.unique(allp[:, 0])) < 2:
        return out
    out["pooled"] = fit_exponent(allp[:, 0], allp[:, 1])
    out["slope"] = slope = within_seed_exponent(list(by_seed.values()))
    if not math.isfinite(slope):
        return out
    out["prefactor"] = float(np.exp(np.mean(np.log(allp[:, 1]) - slope * np.log(allp[:, 0]))))
    out["collapse_median"] = float(np.median(allp[:, 0] * allp[:, 1]))
    rng = np.random.default_rng(rng_seed)
    slopes = []
    for _ in range(n_boot):
        v = within_seed_exponent([by_seed[seeds[k]] for k in
                                  rng.choice(len(seeds), size=len(seeds), replace=True)])
        if math.isfinite(v):
            slopes.append(v)
    if slopes:
        a = (1 - level) / 2
        out["lo"], out["hi"] = (float(v) for v in np.quantile(slopes, [a, 1 - a]))
        out["n_boot"] = len(slopes)
    for s, pts in by_seed.items():
        if len(np.unique(pts[:, 0])) >= 2:
            out["per_seed"][int(s)] = fit_exponent(pts[:, 0], pts[:, 1])
    return out


def summarize(table: Sequence[dict], b: ScalingBudget) -> dict:
    """Per (weight decay, lr) cell and per λη: grokked fraction, median grok step, collapse; the
    fits (all grokked models, excluding large-λη breakdown cells, and on cell medians)."""
    from .phases import PhaseRules, cell_stats, censored_quantile
    rules = PhaseRules()
    cells = []
    for wd in b.weight_decays:
        for lr in b.lrs:
            rows = [r for r in table if r["weight_decay"] == wd and r["lr"] == lr]
            if not rows:
                continue
            s = cell_stats(rows, rules)
            le = wd * lr
            grok = [r["grok_step"] for r in rows]
            T = [None if g is None else g * le for g in grok]
            cells.append(dict(weight_decay=wd, lr=lr, lam_eta=le, n=s["n"], grokked=s["grokked"],
                              median=s["median"], q25=s["q25"], q75=s["q75"], phase=s["phase"],
                              median_memorization=s["median_memorization"],
                              collapse_median=censored_quantile(T, 0.5),
                              collapse_q25=censored_quantile(T, 0.25),
                              collapse_q75=censored_quantile(T, 0.75),
                              diverged=sum(bool(r["diverged"]) for r in rows),
                              errors=sum(r["error"] is not None for r in rows)))
    grokked = [r for r in table if r["grok_step"] is not None and r["error"] is None]

    def points(rows):
        return [(r["seed"], r["weight_decay"] * r["lr"], r["grok_step"]) for r in rows]

    fit_all = fit_with_interval(points(grokked), b.bootstrap)
    # the law's reference value: the collapse median of the smallest λη cells that mostly grokked
    ok = [c for c in cells if math.isfinite(c["collapse_median"])]
    ref = None
    if ok:
        smallest = min(c["lam_eta"] for c in ok)
        ref = float(np.median([c["collapse_median"] for c in ok if c["lam_eta"] == smallest]))
    for c in cells:
        dev = c["collapse_median"] / ref - 1 if ref and math.isfinite(c["collapse_median"]) else None
        c["collapse_deviation"] = dev
        c["law_holds"] = dev is not None and abs(dev) <= COLLAPSE_TOLERANCE
    holding = {(c["weight_decay"], c["lr"]) for c in cells if c["law_holds"]}
    fit_holding = fit_with_interval(points([r for r in grokked
                                            if (r["weight_decay"], r["lr"]) in holding]), b.bootstrap)
    med = [(c["lam_eta"], c["median"]) for c in cells if math.isfinite(c["median"])]
    fit_medians = dict(slope=float("nan"))
    if len({m[0] for m in med}) >= 2:
        fit_medians = dict(slope=fit_exponent(np.array([m[0] for m in med]),
                                              np.array([m[1] for m in med])), n_cells=len(med))
    gap = [(r["seed"], r["weight_decay"] * r["lr"], r["grok_step"] - r["memorization_step"])
           for r in table if r["grok_step"] is not None and r["memorization_step"] is not None
           and r["grok_step"] > r["memorization_step"] and r["error"] is None]
    by_wd = {wd: fit_with_interval(points([r for r in grokked if r["weight_decay"] == wd]),
                                   b.bootstrap) for wd in b.weight_decays} if len(b.lrs) > 1 else {}
    by_lr = {lr: fit_with_interval(points([r for r in grokked if r["lr"] == lr]), b.bootstrap)
             for lr in b.lrs} if len(b.weight_decays) > 1 else {}
    return dict(cells=cells, fit=fit_all, fit_law_cells=fit_holding, fit_medians=fit_medians,
                fit_by_weight_decay={str(k): v for k, v in by_wd.items()},
                fit_by_lr={str(k): v for k, v in by_lr.items()},
                fit_gap=fit_with_interval(gap, b.bootstrap), collapse_reference=ref,
                never_grokked=sum(r["grok_step"] is None for r in table),
                n_models=len(table))


# ---------------------------------------------------------------------------------------- run
def _rate(table: Sequence[dict], wall: float) -> float:
    return sum(r["steps_done"] or 0 for r in table) / max(wall, 1e-9)


def _computed(table: Sequence[dict]) -> int:
    """Model-steps a launch spans: every model of a launch is carried until the launch ends (on the
    torch backend's numba path a stopped model skips forward and backward; elsewhere its update is
    computed and discarded)."""
    by_launch: dict[str, list] = {}
    for r in table:
        by_launch.setdefault(r["launch"], []).append(r["steps_done"] or 0)
    return sum(len(v) * max(v) for v in by_launch.values())


def reproduce_scaling(out, quick: bool = False, seeds: Optional[int] = None,
                      steps: Optional[int] = None, weight_decays=None, lrs=None,
                      backend: str = "auto", alone: bool = True, log=print) -> Path:
    """Run the sweep (and the one-launch-each comparison), then write_analysis."""
    from .sweep import sweep
    b = make_budget(quick, seeds, steps, weight_decays, lrs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(b)
    swept, common = sweep_cells(b, out / "sweep", backend, log, "scaling")
    if alone:
        log("[scaling] the same models, one launch each …")
        lone = sweep(base, out=out / "alone", max_models_per_launch=1, figures=False, **common)
        log(f"[scaling] one launch each: {lone.status['wall_time']:.1f} s")
    s = write_analysis(out, b)
    log(f"[scaling] exponent {s['fit']['slope']:.3f} [{s['fit']['lo']:.3f}, {s['fit']['hi']:.3f}] "
        f"(theory −1); wrote {out / 'report.md'}")
    return out


def sweep_cells(b, out, backend: str = "auto", log=print, tag: str = "scaling"):
    """paper-real (base_config(b)) over weight_decay × lr × b.seeds seeds, stop_at grok, one
    launch per (weight decay, lr) with its seeds batched, into `out`; (SweepResult, the sweep's
    arguments but out and the launch cap)."""
    from .sweep import sweep
    grid = {"weight_decay": list(b.weight_decays), "lr": list(b.lrs)}
    common = dict(grid=grid, seeds=list(range(b.seeds)), backend=backend, stop_at="grok")
    log(f"[{tag}] sweep: weight_decay {list(b.weight_decays)} × lr {list(b.lrs)} × {b.seeds} "
        f"seeds, {b.steps} steps, stop_at grok …")
    swept = sweep(base_config(b), out=out, max_models_per_launch=b.seeds, **common)
    log(f"[{tag}] sweep: {swept.status['wall_time']:.1f} s")
    return swept, common


def budget_of(out) -> ScalingBudget:
    """The budget a finished `reproduce scaling` directory ran with (from its sweep's plan)."""
    from .sweep import SweepResult
    out = Path(out)
    swept = SweepResult.load(out / "sweep")
    mode = "rederived"
    if (out / "summary.json").is_file():
        mode = json.loads((out / "summary.json").read_text())["budget"]["mode"]
    return ScalingBudget(weight_decays=tuple(swept.axes["weight_decay"]),
                         lrs=tuple(swept.axes["lr"]), seeds=len(swept.seeds),
                         steps=swept.base.steps, log_every=swept.base.log_every, mode=mode)


def write_analysis(out, b: Optional[ScalingBudget] = None) -> dict:
    """Summary, figures and report of the runs in out/sweep (and out/alone, if there): the timings
    are the sweeps' own wall times (status.json: training and tables, not figures)."""
    from .sweep import SweepResult
    out = Path(out)
    b = b or budget_of(out)
    swept = SweepResult.load(out / "sweep")
    if not swept.complete:
        raise GrokfastError(f"{out / 'sweep'} is not finished: `grokfast sweep --resume "
                            f"{out / 'sweep'}` first")
    t_sweep = swept.status["wall_time"]
    timing = dict(sweep_wall=t_sweep, sweep_model_steps=sum(r["steps_done"] for r in swept.table),
                  sweep_computed=_computed(swept.table), sweep_rate=_rate(swept.table, t_sweep),
                  launches=len(swept.plan))
    same = None
    if (out / "alone" / "plan.json").is_file():
        lone = SweepResult.load(out / "alone")
        t_alone = lone.status["wall_time"]
        timing.update(alone_wall=t_alone, alone_rate=_rate(lone.table, t_alone),
                      alone_launches=len(lone.plan))
        timing["speedup"] = timing["sweep_rate"] / timing["alone_rate"]
        same = compare_tables(swept.table, lone.table)
    s = summarize(swept.table, b)
    s.update(budget=asdict(b), timing=timing, alone_rows_equal=same)
    plot_grok_step(swept.table, s, out / "scaling_grok_step.png")
    plot_collapse(swept.table, s, out / "scaling_collapse.png")
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=_json_default))
    write_report(out / "report.md", b, s, swept.base)
    return s


def compare_tables(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Rows that differ between two tables of the same models (launch and wall time aside) and
    the columns where they do."""
    drop = ("launch", "wall_time")
    rows, columns = 0, set()
    for x, y in zip(a, b):
        diff = [k for k in x if k not in drop and x[k] != y.get(k)]
        rows += bool(diff)
        columns.update(diff)
    return dict(rows=len(a), differing_rows=rows + abs(len(a) - len(b)),
                differing_columns=sorted(columns))


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


# ---------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class _Figure:
    """One scaling figure: seeds' dots coloured by lr and shaped by weight decay, ▲ marks."""

    def __init__(self, table, size):
        plt = self.plt = _plt()
        self.wds = sorted({r["weight_decay"] for r in table})
        self.lrs = sorted({r["lr"] for r in table})
        self.mk = {wd: m for wd, m in zip(self.wds, "os^Dvp<>h*")}
        self.fig, self.ax = plt.subplots(figsize=size)
        self.table = table

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
        self.fig.savefig(path, dpi=110)
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
    ax.set(xscale="log", yscale="log", xlabel="1 / (weight_decay · lr)",
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
    ax.set(xscale="log", yscale="log", xlabel="λη = weight_decay · lr",
           ylabel="grok step × λη (flow time to grok)")
    F.finish(path, "collapse: flat where grok step ∝ 1/(λη); medians with interquartile bars; "
                   "▲ never grokked/seeds", [c["lam_eta"] for c in s["cells"]])


# ---------------------------------------------------------------------------------------- report
def _f(v, fmt="{:.3g}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return fmt.format(v)


def _interval(f: dict) -> str:
    if not math.isfinite(f.get("slope", float("nan"))):
        return "not measurable (fewer than two λη values with a grokked model)"
    ci = f" (95 % interval over seeds {f['lo']:.3f} … {f['hi']:.3f})" if math.isfinite(
        f.get("lo", float("nan"))) else ""
    return f"{f['slope']:.3f}{ci}, {f['n_points']} models of {f['n_seeds']} seeds"


def write_report(path, b: ScalingBudget, s: dict, base: Config) -> None:
    t = s["timing"]
    f = s["fit"]
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
         f"- grok step: first evaluation with test accuracy ≥ 0.99. The sweep is in `sweep/` "
         f"(results.csv, phase diagram, time-to-grok plots); `alone/` holds the same models "
         f"trained one launch each.", ""]
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
    Path(path).write_text("\n".join(L) + "\n")


def local_exponents(cells: Sequence[dict], b: ScalingBudget) -> list:
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


def _verdict(s: dict, b: ScalingBudget) -> list:
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


# ---------------------------------------------------------------------------------------- CLI
def parse_floats(text: Optional[str], name: str) -> Optional[list]:
    """`--NAME A,B,…` as floats (None when not given)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise GrokfastError(f"--{name} {text!r}: give numbers separated by commas") from None


def cmd_scaling(args) -> int:
    out = Path(args.out) if args.out else \
        Path("runs") / f"reproduce-scaling-{time.strftime('%Y%m%d-%H%M%S')}"

    if args.report_only:
        if not args.out:
            raise GrokfastError("--report-only rewrites the report of a finished run: pass --out DIR")
        s = write_analysis(out)
        print(f"[scaling] exponent {s['fit']['slope']:.3f}; wrote {out / 'report.md'}")
        return 0
    reproduce_scaling(out, quick=args.quick, seeds=args.seeds, steps=args.steps,
                      weight_decays=parse_floats(args.weight_decays, "weight-decays"),
                      lrs=parse_floats(args.lrs, "lrs"), backend=args.backend)
    return 0
