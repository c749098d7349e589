"""`grokfast reproduce hierarchy`: where does Eq. 20's factor ~2.5 come from? A ladder of predictors
of each trained model's grok time, from real training down to Eq. 20.

    grokfast reproduce hierarchy [--quick] [--out DIR] [--seeds N] [--steps N]
                                 [--weight-decays A,B,…] [--lrs A,B,…] [--backend B]
    grokfast reproduce hierarchy --report-only --out DIR

Per paper-real model (weight decay × lr × seeds, as `reproduce prediction` trains them), its grok
time τ = weight_decay · lr · steps (torch's convention) on each rung:

  L0  trained GD (the truth), stop at grok                          (DIR/sweep: `reproduce scaling`'s sweep)
  L1  GD at lr/2, lr/4, weight decay unchanged, τ fixed            (DIR/gd.json; 2×, 4× the steps)
  L2  GD at weight decay/2, /4, lr unchanged, τ fixed              (toward the theorem's λ → 0)
  L3  the exact zero-loss-manifold flow (grokfast.theory.simulate_manifold) from the trained
      (W1, W2) at the memorization step, retracted onto Z          (DIR/manifold)
  L4  L3 with W2 = H⁺Y after every step (N = 0, the exact metric G kept)   (DIR/manifold_n0)
  L5  Eq. 20 from W1 at memorization; L6 Eq. 20 from initialization (`reproduce prediction`'s
      snapshots and simulations, reused: DIR/memorization.npz, DIR/sim, DIR/sim_init_half)

A flow rung's grok step is the memorization step + τ_flow / (weight_decay · lr) (L6: τ / (wd·lr)).
The analysis (hierarchy_report) writes hierarchy.csv, summary.json, report.md and
hierarchy_ladder.png; `--report-only` redoes it from the saved runs. Every file of DIR is written
here or in hierarchy_report.write_analysis (one place each, for the output-directory rule).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.backends.torch.paths import intra_op_threads
from grokfast.engine import run
from grokfast.theory.manifold_sim import simulate_manifold

from .prediction import (
    SIM_THREADS,
    PredictionBudget,
    memorization_snapshots,
    model_config,
    read_budget,
    run_simulations,
    start_study,
)
from .scaling import override

FACTORS = (2, 4)


@dataclass
class HierarchyBudget:
    weight_decays: tuple = (2e-4, 4e-4)
    lrs: tuple = (1.0, 2.0)
    seeds: int = 6
    steps: int = 40_000
    log_every: int = 50
    sim_time: float = 10.0          # Eq. 20's flow time per model (L5, L6)
    sim_eta: float = 2e-3           # Eq. 20's Euler step
    sim_resolution: float = 0.02
    tau_max: float = 8.0            # the manifold flow's τ from memorization (L3, L4)
    record_every: float = 0.05
    rtol: float = 0.05              # the manifold flow's norm-identity tolerance per step
    bootstrap: int = 2000
    mode: str = "full"

    def prediction_budget(self) -> PredictionBudget:
        """The Eq. 20 settings in `reproduce prediction`'s budget (its simulations are reused)."""
        return PredictionBudget(weight_decays=self.weight_decays, lrs=self.lrs, seeds=self.seeds,
                                steps=self.steps, log_every=self.log_every, sim_time=self.sim_time,
                                sim_eta=self.sim_eta, sim_resolution=self.sim_resolution,
                                bootstrap=self.bootstrap, mode=self.mode)


def make_budget(quick: bool = False, seeds: Optional[int] = None, steps: Optional[int] = None,
                weight_decays: Optional[Sequence[float]] = None,
                lrs: Optional[Sequence[float]] = None) -> HierarchyBudget:
    """Full: weight decay 2e-4, 4e-4 × lr 1, 2 × 6 seeds (24 models), 40 000 steps.
    --quick: weight decay 4e-4 × lr 2 × 3 seeds, 10 000 steps, τ ≤ 4.5 on the manifold flows."""
    b = HierarchyBudget(weight_decays=(4e-4,), lrs=(2.0,), seeds=3, steps=10_000, log_every=25,
                        tau_max=4.5, sim_time=8.0, mode="quick") if quick else HierarchyBudget()
    return override(b, seeds, steps, weight_decays, lrs)


def budget_of(out) -> HierarchyBudget:
    return read_budget(out, HierarchyBudget, "hierarchy")


def gd_rung_configs(base, table: Sequence[dict], k: int) -> list:
    """L1 (lr/k) and L2 (weight decay/k) configs of every table row, τ fixed: k× the steps."""
    out = []
    for r in table:
        c = model_config(base, r)
        out += [c.replace(lr=c.lr / k), c.replace(weight_decay=c.weight_decay / k)]
    return out


def run_gd_rungs(base, table: Sequence[dict], b: HierarchyBudget, backend: str, log=print) -> list:
    """L1 and L2: per factor k one launch of every model at lr/k and at weight decay/k, k·steps,
    stop at grok. Rows: weight_decay, lr, seed, k, rung ("L1" or "L2"), memorization_step,
    grok_step (its own GD steps; None: not within k·steps)."""
    rows = []
    for k in FACTORS:
        sized = base.replace(steps=k * b.steps, log_every=k * b.log_every, eval_every=k * b.log_every)
        configs = gd_rung_configs(sized, table, k)
        log(f"[hierarchy] GD at lr/{k} and weight decay/{k}: {len(configs)} models, "
            f"{k * b.steps} steps …")
        t0 = time.perf_counter()
        results = run(configs, backend=backend, stop_at="grok")
        log(f"[hierarchy] … {time.perf_counter() - t0:.1f} s")
        for j, res in enumerate(results):
            r = table[j // 2]
            rows.append(dict(weight_decay=r["weight_decay"], lr=r["lr"], seed=r["seed"], k=k,
                             rung="L1" if j % 2 == 0 else "L2",
                             memorization_step=res.memorization_step, grok_step=res.grok_step,
                             diverged=res.diverged))
    return rows


def run_manifold(base, snap: dict, b: HierarchyBudget, log=print) -> dict:
    """L3 and L4 from every memorized model's (W1, W2) at its memorization step, float64."""
    W1, W2 = (torch.from_numpy(snap[k]).double() for k in ("W1", "W2"))
    out = {}
    with intra_op_threads(SIM_THREADS, torch.device("cpu")):
        for name, reset in (("manifold", False), ("manifold_n0", True)):
            log(f"[hierarchy] {name}: the exact flow from {len(W1)} memorized models, τ ≤ "
                f"{b.tau_max:g} …")
            out[name] = simulate_manifold(base, W1, W2, tau_max=b.tau_max, reset_W2=reset,
                                          record_every=b.record_every, rtol=b.rtol,
                                          stop_at_grok=True, labels=[int(r) for r in snap["row"]],
                                          log=log)
    return out


def reproduce_hierarchy(out, quick: bool = False, seeds: Optional[int] = None,
                        steps: Optional[int] = None, weight_decays=None, lrs=None,
                        backend: str = "auto", log=print,
                        budget: Optional[HierarchyBudget] = None) -> Path:
    """Train (L0, L1, L2), snapshot at memorization, the flows (L3–L6), then write_analysis."""
    from .hierarchy_report import write_analysis
    b = budget or make_budget(quick, seeds, steps, weight_decays, lrs)
    out = Path(out)
    t_all = time.perf_counter()
    swept = start_study(out, b, backend, log, "hierarchy")
    timing = dict(L0=swept.status["wall_time"], models=len(swept.table))
    t0 = time.perf_counter()
    gd = run_gd_rungs(swept.base, swept.table, b, backend, log)
    (out / "gd.json").write_text(json.dumps(gd, indent=2))
    timing["L1_L2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    snap = memorization_snapshots(swept.base, swept.table, backend)
    np.savez(out / "memorization.npz", **snap)
    timing["snapshots"] = time.perf_counter() - t0
    for name, (sim, wall) in run_simulations(swept.base, b.prediction_budget(), snap, log).items():
        sim.save(out / name)
        timing[f"L5_L6_{name}"] = wall
    for name, res in run_manifold(swept.base, snap, b, log).items():
        res.save(out / name)
        timing[name] = res.wall_time
    timing["total"] = time.perf_counter() - t_all
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    s = write_analysis(out)
    log(f"[hierarchy] {s['answer']}; wrote {out / 'report.md'}")
    return out
