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

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.store.output import command_output
from grokfast.store.ownership import read_json
from grokfast.sweeps import sweep
from grokfast.sweeps.phases import PhaseRules, cell_stats, censored_quantile

from .report import write_json
from .stages import finished_sweep, reproducing, sweep_stage
from .scaling_report import (
    COLLAPSE_TOLERANCE,
    plot_collapse,
    plot_grok_step,
    write_report,
)


COMMAND = "reproduce scaling"


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
    """Run the sweep (and the one-launch-each comparison), then the analysis (held by
    reproducing: a rerun after an interruption resumes the sweeps from their checkpoints)."""
    b = make_budget(quick, seeds, steps, weight_decays, lrs)
    with reproducing(out, COMMAND, dict(budget=asdict(b), backend=backend, alone=alone),
                     "sweep/plan.json") as o:
        base = base_config(b)
        swept, common = sweep_cells(b, o, backend, log, "scaling")
        if alone:
            log("[scaling] the same models, one launch each …")
            sweep_stage(o, "alone", lambda d, resume: sweep(
                base, out=d, resume=resume, max_models_per_launch=1, figures=False, **common),
                log, "scaling")
        s = _analysis(o, b)
    log(f"[scaling] exponent {s['fit']['slope']:.3f} [{s['fit']['lo']:.3f}, {s['fit']['hi']:.3f}] "
        f"(theory −1); wrote {o.dir / 'report.md'}")
    return o.dir


def sweep_cells(b, o, backend: str = "auto", log=print, tag: str = "scaling"):
    """paper-real (base_config(b)) over weight_decay × lr × b.seeds seeds, stop_at grok, one
    launch per (weight decay, lr) with its seeds batched, into the stage `sweep` of the output o
    (resumed when an earlier run started it); (SweepResult, the sweep's arguments but out and
    the launch cap)."""
    grid = {"weight_decay": list(b.weight_decays), "lr": list(b.lrs)}
    common = dict(grid=grid, seeds=list(range(b.seeds)), backend=backend, stop_at="grok",
                  handle_signals=True)
    log(f"[{tag}] sweep: weight_decay {list(b.weight_decays)} × lr {list(b.lrs)} × {b.seeds} "
        f"seeds, {b.steps} steps, stop_at grok …")
    swept = sweep_stage(o, "sweep", lambda d, resume: sweep(
        base_config(b), out=d, resume=resume, max_models_per_launch=b.seeds, **common), log, tag)
    return swept, common


def budget_of(out) -> ScalingBudget:
    """The budget a finished `reproduce scaling` directory ran with (from its sweep's plan)."""
    out = Path(out)
    swept = finished_sweep(out / "sweep")
    mode = "rederived"
    if (out / "summary.json").is_file():
        mode = read_json(out / "summary.json").get("budget", {}).get("mode")
        if not isinstance(mode, str):
            raise GrokfastError(f"{out / 'summary.json'} is damaged (no budget.mode): restore "
                                f"it, or delete it to have the budget derived from the sweep")
    return ScalingBudget(weight_decays=tuple(swept.axes["weight_decay"]),
                         lrs=tuple(swept.axes["lr"]), seeds=len(swept.seeds),
                         steps=swept.base.steps, log_every=swept.base.log_every, mode=mode)


def write_analysis(out, b: Optional[ScalingBudget] = None) -> dict:
    """Summary, figures and report of the runs in out/sweep (and out/alone, if there), written
    under the rule of every command's output (--report-only)."""
    with command_output(out, COMMAND, create=False, marker="sweep/plan.json") as o:
        return _analysis(o, b)


def _analysis(o, b: Optional[ScalingBudget] = None) -> dict:
    """write_analysis into the held output o: the timings are the sweeps' own wall times
    (status.json: training and tables, not figures)."""
    out = o.dir
    b = b or budget_of(out)
    swept = finished_sweep(out / "sweep")
    t_sweep = swept.status["wall_time"]
    timing = dict(sweep_wall=t_sweep, sweep_model_steps=sum(r["steps_done"] for r in swept.table),
                  sweep_computed=_computed(swept.table), sweep_rate=_rate(swept.table, t_sweep),
                  launches=len(swept.plan))
    same = None
    if (out / "alone" / "plan.json").is_file():
        lone = finished_sweep(out / "alone")
        t_alone = lone.status["wall_time"]
        timing.update(alone_wall=t_alone, alone_rate=_rate(lone.table, t_alone),
                      alone_launches=len(lone.plan))
        timing["speedup"] = timing["sweep_rate"] / timing["alone_rate"]
        same = compare_tables(swept.table, lone.table)
    s = summarize(swept.table, b)
    s.update(budget=asdict(b), timing=timing, alone_rows_equal=same)
    plot_grok_step(swept.table, s, o.path("scaling_grok_step.png"))
    plot_collapse(swept.table, s, o.path("scaling_collapse.png"))
    write_json(o.path("summary.json"), s)
    write_report(o.path("report.md"), b, s, swept.base)
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
