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

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from grokfast.backends.torch.paths import intra_op_threads
from grokfast.engine import run
from grokfast.theory.manifold_sim import simulate_manifold

from .hierarchy_budget import COMMAND, HierarchyBudget, make_budget
from .hierarchy_report import analysis
from .prediction import SIM_THREADS, memorization_snapshots, model_config, simulation_jobs
from .report import read_npz, write_json, write_npz
from .scaling import base_config, sweep_cells
from .stages import reproducing, stage

FACTORS = (2, 4)
FLOW_WORKERS = 2  # manifold-flow models integrated at a time, one torch thread each (2 cores)


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


def manifold_jobs(base, snap: dict, b: HierarchyBudget, log=print) -> dict:
    """L3 ("manifold") and L4 ("manifold_n0"): name → a function running the exact flow from every
    memorized model's (W1, W2) at its memorization step, float64, FLOW_WORKERS models at a time on
    SIM_THREADS threads each."""
    W1, W2 = (torch.from_numpy(snap[k]).double() for k in ("W1", "W2"))

    def job(name: str, reset: bool):
        def run_flow():
            log(f"[hierarchy] {name}: the exact flow from {len(W1)} memorized models, τ ≤ "
                f"{b.tau_max:g} …")
            with intra_op_threads(SIM_THREADS, torch.device("cpu")):
                return simulate_manifold(base, W1, W2, tau_max=b.tau_max, reset_W2=reset,
                                         record_every=b.record_every, rtol=b.rtol,
                                         h0=0.01, h_max=0.05, h_min=b.h_min,
                                         stop_at_grok=True, workers=FLOW_WORKERS,
                                         labels=[int(r) for r in snap["row"]], log=log)
        return run_flow

    return {"manifold": job("manifold", False), "manifold_n0": job("manifold_n0", True)}


def reproduce_hierarchy(out, quick: bool = False, seeds: Optional[int] = None,
                        steps: Optional[int] = None, weight_decays=None, lrs=None,
                        backend: str = "auto", log=print,
                        budget: Optional[HierarchyBudget] = None) -> Path:
    """Train (L0, L1, L2), snapshot at memorization, the flows (L3–L6), then the analysis; returns
    out. Held by reproducing (the rule of every command's output): a rerun after an interruption
    keeps the finished stages and resumes the sweep from its checkpoints."""
    b = budget or make_budget(quick, seeds, steps, weight_decays, lrs)
    t_all = time.perf_counter()
    with reproducing(out, COMMAND, dict(budget=asdict(b), backend=backend), "budget.json") as o:
        out = o.dir
        o.write_text("config.json", base_config(b).to_json())
        write_json(o.path("budget.json"), asdict(b))
        swept, _ = sweep_cells(b, o, backend, log, "hierarchy")
        stage(o, "gd.json", lambda: run_gd_rungs(swept.base, swept.table, b, backend, log),
                   save=lambda rows: write_json(o.path("gd.json"), dict(rows=rows)),
              log=log, tag="hierarchy")
        snap = stage(o, "memorization.npz", lambda: memorization_snapshots(
            swept.base, swept.table, backend), save=lambda z: write_npz(o.path(
                "memorization.npz"), z), load=lambda: read_npz(out / "memorization.npz"),
            log=log, tag="hierarchy")
        for name, job in simulation_jobs(swept.base, b.prediction_budget(), snap).items():
            stage(o, name, job, save=lambda sim, name=name: sim.save(o.fresh_dir(name)), log=log,
                  tag="hierarchy")
        for name, job in manifold_jobs(swept.base, snap, b, log).items():
            stage(o, name, job, save=lambda res, name=name: res.save(o.fresh_dir(name)), log=log,
                  tag="hierarchy")
        seconds = o.stages()
        timing = dict(L0=swept.status["wall_time"], models=len(swept.table),
                      L1_L2=seconds["gd.json"], snapshots=seconds["memorization.npz"],
                      L5_L6_sim=seconds["sim"], L5_L6_sim_init_half=seconds["sim_init_half"],
                      manifold=seconds["manifold"], manifold_n0=seconds["manifold_n0"])
        timing["total"] = time.perf_counter() - t_all
        write_json(o.path("timing.json"), timing)
        s = analysis(o)
    log(f"[hierarchy] {s['answer']}; wrote {out / 'report.md'}")
    return out
