"""`grokfast reproduce prediction`: does Eq. 20 tell, model by model, when a trained network groks?

    grokfast reproduce prediction [--quick] [--out DIR] [--seeds N] [--steps N]
                                  [--weight-decays A,B,…] [--lrs A,B,…] [--backend B]
    grokfast reproduce prediction --report-only --out DIR   # the analysis again, no training

trains paper-real over weight_decay × lr × seeds until it groks (DIR/sweep: grokfast.reproduce.scaling's
sweep, one launch per (weight decay, lr) with its seeds batched), then simulates the decoupled
flow of Eq. 20 (grokfast.theory.simulate, λ → 0, float64, batched over models, on the trained
models' own split) twice per model:

  from its initialization     the W1 the training started from (init_params of its seed, float32).
                              Eq. 20 with λ → 0 does not involve λ or η, so one simulation per seed
                              serves every (weight decay, lr); predicted = T / (weight_decay · lr).
  from its memorization step  W1 of the trained model at its memorization step (first logged step
                              with train accuracy 1), taken by a second, short run of the same
                              configs to that step (MemorizationSnapshot; bitwise the first run's
                              trajectory, runs being deterministic); predicted = that step + T/(λη).

T is the simulation's flow time to grok (first recorded step with test accuracy ≥ grok_threshold,
times the Euler step), converted by grokfast.theory.sim_time_to_gd_steps. A simulation that has not
grokked by `sim_time` units of flow time has no prediction. The Euler check simulates the seeds from
their initialization again with half the Euler step: how far the prediction itself moves. The
simulations run on one torch thread (SIM_THREADS), in float64 from the float32 parameters.

DIR: config.json (base config), budget.json, timing.json, sweep/, memorization.npz (row, step, W1,
W2 of every memorized model), sim/ (one SimResult: models 0 … seeds − 1 from the initializations,
then one per memorized model in memorization.npz's order), sim_init_half/ (the Euler check),
prediction.csv, summary.json, report.md, prediction_scatter.png, prediction_cells.png (the analysis:
prediction_report; the report's text: prediction_text), output.json (the command, its options and
its finished stages: grokfast.reproduce.stages — an interrupted run continues when the same
command is run again).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.backends.torch.paths import intra_op_threads
from grokfast.config import Config
from grokfast.engine import run
from grokfast.errors import GrokfastError
from grokfast.store.output import command_output
from grokfast.store.ownership import read_json
from grokfast.model import init_params
from grokfast.theory import SimResult, sim_time_to_gd_steps, simulate

from .prediction_report import (
    decoupling,
    euler_check,
    plot_cells,
    plot_scatter,
    spearman,
    summarize,
)
from .prediction_text import write_report
from .report import read_npz, write_json, write_npz, write_text
from .scaling import base_config, override, sweep_cells
from .stages import check_stages, finished_sweep, reproducing, stage

COLUMNS = ("weight_decay", "lr", "seed", "memorization_step", "grok_step", "predicted_from_init",
           "predicted_from_memorization", "flow_time_trained", "flow_time_from_init",
           "flow_time_from_memorization")
COMMAND = "reproduce prediction"
SIM_THREADS = 1  # the batched float64 simulation: one thread is faster on a shared 2-core machine


@dataclass
class PredictionBudget:
    weight_decays: tuple = (1e-4, 2e-4, 4e-4, 8e-4)
    lrs: tuple = (1.0, 2.0)
    seeds: int = 12
    steps: int = 80_000
    log_every: int = 100
    sim_time: float = 12.0          # flow time simulated per model (one unit = 1/(λη) GD steps)
    sim_eta: float = 1e-3           # Euler step, in flow time
    sim_resolution: float = 0.02    # flow time between recorded simulation steps
    bootstrap: int = 2000
    mode: str = "full"

    @property
    def sim_steps(self) -> int:
        return max(1, round(self.sim_time / self.sim_eta))

    @property
    def sim_log_every(self) -> int:
        return max(1, round(self.sim_resolution / self.sim_eta))

    @property
    def products(self) -> list:
        return sorted({wd * lr for wd in self.weight_decays for lr in self.lrs})


def make_budget(quick: bool = False, seeds: Optional[int] = None, steps: Optional[int] = None,
                weight_decays: Optional[Sequence[float]] = None,
                lrs: Optional[Sequence[float]] = None) -> PredictionBudget:
    """Full: weight decay 1e-4 … 8e-4 × lr 1, 2 × 12 seeds, 80 000 steps, 12 units of flow time
    at Euler step 1e-3. --quick: weight decay 2e-4, 4e-4 × lr 2 × 8 seeds (16 models), 16 000
    steps, 10 units at Euler step 2e-3. Overrides are checked as `reproduce scaling` checks them."""
    b = PredictionBudget(weight_decays=(2e-4, 4e-4), lrs=(2.0,), seeds=8, steps=16_000,
                         sim_time=10.0, sim_eta=2e-3, mode="quick") if quick else PredictionBudget()
    return override(b, seeds, steps, weight_decays, lrs)


def read_budget(out, cls, command: str):
    """The budget (dataclass cls) a finished `reproduce <command>` directory ran with: one
    GrokfastError naming budget.json when it is missing or damaged."""
    path = Path(out) / "budget.json"
    if not path.is_file():
        raise GrokfastError(f"{out} holds no `reproduce {command}` run (budget.json is missing): "
                            f"run `grokfast reproduce {command} --out {out}` first")
    d = read_json(path)
    try:
        return cls(**{**d, "weight_decays": tuple(d["weight_decays"]), "lrs": tuple(d["lrs"])})
    except (KeyError, TypeError):
        raise GrokfastError(f"{path} is damaged (not the budget of a `reproduce {command}` run): "
                            f"restore it, or run the command again in a new --out") from None


def budget_of(out) -> PredictionBudget:
    return read_budget(out, PredictionBudget, "prediction")


def sim_config(base: Config, b: PredictionBudget) -> Config:
    """The simulation's config: the trained models' task, split, width and init; lr = Euler step."""
    return base.replace(lr=b.sim_eta, steps=b.sim_steps, log_every=b.sim_log_every,
                        eval_every=b.sim_log_every, dtype="float64")


def model_config(base: Config, row: dict) -> Config:
    """The config of one sweep table row (the sweep builds its configs the same way)."""
    return base.replace(weight_decay=row["weight_decay"], lr=row["lr"], seed=row["seed"])


# ---------------------------------------------------------------------------------------- W1 at memorization
class MemorizationSnapshot:
    """Engine observer: copies (W1, W2) of model i at step at[i] (None: never); read-only, so the
    run is bitwise the one without it."""

    def __init__(self, at: Sequence[Optional[int]]):
        self.at = [None if s is None else int(s) for s in at]
        self.W1: list = [None] * len(self.at)
        self.W2: list = [None] * len(self.at)

    def pause_steps(self, steps: int):
        return sorted({s for s in self.at if s is not None and s <= steps})

    def observe(self, step: int, W1: torch.Tensor, W2: torch.Tensor) -> None:
        for i, s in enumerate(self.at):
            if s == step:
                self.W1[i], self.W2[i] = W1[i].clone(), W2[i].clone()

    def extras(self) -> list:
        return [{} for _ in self.at]


def memorization_snapshots(base: Config, table: Sequence[dict], backend: str = "auto") -> dict:
    """(W1, W2) of every memorized model of `table` at its memorization step: one launch of the same
    configs (all models batched), stopped right after the last of those steps.
    Returns row [M] (table indices), step [M], seed [M], W1 [M, d_in, width], W2 [M, width, p] (numpy)."""
    rows = [i for i, r in enumerate(table) if r["memorization_step"] is not None
            and r.get("error") is None]
    if not rows:
        raise GrokfastError("no model memorized its training set within the steps: nothing to "
                            "simulate from memorization (give more --steps)")
    at = [table[i]["memorization_step"] for i in rows]
    snap = MemorizationSnapshot(at)
    run([model_config(base, table[i]) for i in rows], backend=backend, observers=[snap],
        max_steps=max(at) + 1)
    missing = [rows[i] for i, w in enumerate(snap.W1) if w is None]
    if missing:
        raise GrokfastError(f"rows {missing}: the second run did not reach their memorization "
                            f"step (a model diverged before it?)")
    return dict(row=np.array(rows), step=np.array(at), seed=np.array([table[i]["seed"] for i in rows]),
                W1=torch.stack(snap.W1).numpy(), W2=torch.stack(snap.W2).numpy())


# ---------------------------------------------------------------------------------------- simulations
def simulation_jobs(base: Config, b: PredictionBudget, snap: dict) -> dict:
    """Eq. 20 in one batch from every seed's initial W1 (models 0 … seeds − 1: the trained models'
    own float32 init_params, exactly where training started) and from every memorized model's W1 at
    its memorization step (the rest, snap's order); and from the initial W1 again at half the Euler
    step. name → a function returning its SimResult: "sim", "sim_init_half"."""
    cfg = sim_config(base, b)
    half = cfg.replace(lr=b.sim_eta / 2, steps=2 * b.sim_steps, log_every=2 * b.sim_log_every,
                       eval_every=2 * b.sim_log_every)
    seeds = list(range(b.seeds))
    W1_0 = torch.stack([init_params(base.replace(seed=s))[0] for s in seeds])
    W1_mem = torch.from_numpy(snap["W1"])

    def threads(job):
        def run_job():
            with intra_op_threads(SIM_THREADS, torch.device("cpu")):
                return job()
        return run_job

    return {"sim": threads(lambda: simulate(cfg, seeds=seeds + [int(v) for v in snap["seed"]],
                                            W1_init=torch.cat([W1_0.to(W1_mem.dtype), W1_mem]))),
            "sim_init_half": threads(lambda: simulate(half, seeds=seeds, W1_init=W1_0))}


def flow_times(sim) -> list:
    """Per simulated model: flow time to grok (first recorded step with test accuracy ≥
    grok_threshold × the Euler step), None when it did not grok within the simulation."""
    eta = sim.meta["eta"]
    return [None if s is None else s * eta for s in sim.grok_step]


def prediction_rows(base: Config, table: Sequence[dict], snap: dict, T_init: Sequence,
                    T_mem: Sequence) -> list[dict]:
    """One row per table row (COLUMNS): T_init[seed] from the seeds' simulations, T_mem[k] for the
    k-th memorized model of snap; predicted values in GD steps (None: no grok within budget)."""
    mem_of = {int(r): k for k, r in enumerate(snap["row"])}
    out = []
    for i, r in enumerate(table):
        wd, lr, seed = r["weight_decay"], r["lr"], r["seed"]
        t_init = T_init[seed]
        k = mem_of.get(i)
        t_mem = None if k is None else T_mem[k]
        g = r["grok_step"]
        out.append(dict(
            weight_decay=wd, lr=lr, seed=seed, memorization_step=r["memorization_step"],
            grok_step=g,
            predicted_from_init=None if t_init is None else sim_time_to_gd_steps(t_init, lr, wd),
            predicted_from_memorization=None if t_mem is None else
            r["memorization_step"] + sim_time_to_gd_steps(t_mem, lr, wd),
            flow_time_trained=None if g is None else g * wd * lr,
            flow_time_from_init=t_init, flow_time_from_memorization=t_mem))
    return out


def write_csv(path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c]
                    for c in COLUMNS])
    write_text(path, buf.getvalue())


def read_csv(path) -> list[dict]:
    """prediction.csv back as dicts (ints for seed and steps, floats, None where empty)."""
    ints = ("seed", "memorization_step", "grok_step")
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append({k: None if v == "" else int(v) if k in ints else float(v)
                        for k, v in r.items()})
    return out


# ---------------------------------------------------------------------------------------- entry points
def write_analysis(out) -> dict:
    """prediction.csv, summary.json, figures and report.md from the runs saved in out, written
    under the rule of every command's output (--report-only)."""
    with command_output(out, COMMAND, create=False, marker="budget.json") as o:
        return _analysis(o)


def _analysis(o) -> dict:
    """write_analysis into the held output o."""
    out = o.dir
    b = budget_of(out)
    check_stages(out, ("memorization.npz", "sim", "sim_init_half"), COMMAND)
    swept = finished_sweep(out / "sweep")
    snap = read_npz(out / "memorization.npz")
    T_all, T_half = (flow_times(SimResult.load(out / n)) for n in ("sim", "sim_init_half"))
    T_init, T_mem = T_all[:b.seeds], T_all[b.seeds:]
    rows = prediction_rows(swept.base, swept.table, snap, T_init, T_mem)
    write_csv(o.path("prediction.csv"), rows)
    s = summarize(rows, b.bootstrap)
    gap = decoupling(swept.base, snap)
    log_err = [abs(math.log(rows[i]["predicted_from_memorization"] / rows[i]["grok_step"]))
               if rows[i]["predicted_from_memorization"] and rows[i]["grok_step"] else None
               for i in snap["row"]]
    s["decoupling"] = dict(median_W2_gap=float(np.median(gap)), q25=float(np.quantile(gap, 0.25)),
                           q75=float(np.quantile(gap, 0.75)),
                           rho_gap_vs_abs_log_ratio=spearman(list(gap), log_err))
    s["euler"] = euler_check(T_init, T_half)
    s["budget"] = read_json(out / "budget.json")
    timing = out / "timing.json"
    s["timing"] = read_json(timing) if timing.is_file() else {}
    s["figures"] = dict(scatter=plot_scatter(rows, o.path("prediction_scatter.png")),
                        cells=plot_cells(s, o.path("prediction_cells.png")))
    write_json(o.path("summary.json"), s)
    write_report(o.path("report.md"), b, s, swept.base)
    return s


def reproduce_prediction(out, quick: bool = False, seeds: Optional[int] = None,
                         steps: Optional[int] = None, weight_decays=None, lrs=None,
                         backend: str = "auto", log=print,
                         budget: Optional[PredictionBudget] = None) -> Path:
    """Train, snapshot, simulate, then the analysis; returns out. budget: a PredictionBudget
    used as it is (instead of make_budget of the other arguments; the tests' tiny settings).
    Held by reproducing: a rerun after an interruption keeps the finished stages and resumes the
    sweep from its checkpoints."""
    b = budget or make_budget(quick, seeds, steps, weight_decays, lrs)
    with reproducing(out, COMMAND, dict(budget=asdict(b), backend=backend), "budget.json") as o:
        out = o.dir
        base = base_config(b)
        o.write_text("config.json", base.to_json())
        write_json(o.path("budget.json"), asdict(b))
        swept, _ = sweep_cells(b, o, backend, log, "prediction")
        log(f"[prediction] W1 at the memorization step of {len(swept.table)} models …")
        snap = stage(o, "memorization.npz", lambda: memorization_snapshots(
            swept.base, swept.table, backend), save=lambda z: write_npz(o.path(
                "memorization.npz"), z), load=lambda: read_npz(out / "memorization.npz"),
            log=log, tag="prediction")
        log(f"[prediction] Eq. 20 from {b.seeds} initializations and {len(snap['row'])} "
            f"memorization steps, {b.sim_time:g} units of flow time; the initializations again "
            f"at half the Euler step …")
        for name, job in simulation_jobs(swept.base, b, snap).items():
            stage(o, name, job, save=lambda sim, name=name: sim.save(o.fresh_dir(name)), log=log,
                  tag="prediction")
        seconds = o.stages()
        timing = dict(training=swept.status["wall_time"], models=len(swept.table),
                      snapshots=seconds["memorization.npz"], sim=seconds["sim"],
                      sim_init_half=seconds["sim_init_half"])
        timing["total"] = sum(v for k, v in timing.items() if k != "models")
        write_json(o.path("timing.json"), timing)
        s = _analysis(o)
    log(f"[prediction] median predicted / trained: from init {s['overall']['from_init']['median_ratio']:.3g}, "
        f"from memorization {s['overall']['from_memorization']['median_ratio']:.3g}; wrote "
        f"{out / 'report.md'}")
    return out
