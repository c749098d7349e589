"""`grokfast reproduce paper`: the paper's Fig. 6 and Fig. 5, two figures beyond it, and a report.

    grokfast reproduce paper [--quick] [--out DIR] [--seeds N]

writes into DIR (default runs/reproduce-paper-TIME):

  fig6_simulation.png   paper-sim (§7.3): Euler on Eq. 20 — test accuracy, train loss, ‖W1‖ over steps
  fig6_fourier.png      the circle statistics per frequency at initialization and at the end
  fig6_fourier_time.png the same statistics over the run, averaged over the final key frequencies
  fig5_alignment.png    paper-real (App. D): train/test loss and cos(Δθ, g̃) per probe step
  shared_time.png       trained vs simulated test accuracy from the same initialization, on GD steps
  geometry.png          ‖θ‖, distance to Z ‖θ − θ'‖ and σ_min(J) over training
  report.md             every measured number beside the paper's, settings and run times
  sim/, real/, shared_sim/   the raw results (SimResult / Result directories)

Seeds are drawn in one launch per experiment (batched). Every curve plots each seed transparent and
their mean opaque. Full mode: 5 seeds, paper-sim 5000 Euler steps, paper-real 100k GD steps with a
probe every 1000 steps plus log-spaced early ones: about 5 minutes on 2 CPU cores (measured 4 min
57 s on an idle 2-core Xeon; 18 min on the same machine shared with other jobs at load 4–6).
--quick: 2 seeds, 3000 Euler steps, 50k GD steps, fewer probes: about 1.5 minutes (measured 85 s).
--sim-steps / --real-steps / --probe-every shrink it further (the CI test uses them).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from grokfast.config import Config
from grokfast.data import make_dataset
from grokfast.engine import train
from grokfast.errors import GrokfastError
from grokfast.store.ownership import read_json
from grokfast.store.result import ResultBatch
from grokfast.theory import SimResult, gd_steps_to_sim_time, sim_time_to_gd_steps, simulate
from grokfast.theory.fourier import key_frequencies
from grokfast.theory.probe import AlignmentProbe

from .paper_figures import (
    fourier_deviations,
    plot_alignment,
    plot_fourier,
    plot_fourier_time,
    plot_geometry,
    plot_shared,
    plot_simulation,
)
from .paper_report import write_report
from .report import write_json
from .stages import reproducing, stage


@dataclass
class Budget:
    """How much of each experiment to run."""

    sim_seeds: int = 5
    sim_steps: int = 5000
    real_seeds: int = 5
    real_steps: int = 100_000
    probe_every: int = 1000
    probe_at: tuple = (20, 50, 100, 200, 300, 500, 700, 1500, 2000, 3000, 5000, 7000)
    probe_lag: int = 10
    probe_gd_steps: int = 100
    shared_eta: float = 1e-3
    mode: str = "full"

    @property
    def sim_log_every(self) -> int:
        return max(1, min(50, self.sim_steps // 10))

    @property
    def real_log_every(self) -> int:
        return max(1, min(100, self.real_steps // 20))


def make_budget(quick: bool = False, seeds: Optional[int] = None, sim_steps: Optional[int] = None,
                real_steps: Optional[int] = None, probe_every: Optional[int] = None) -> Budget:
    """Full or quick budget, with any of seeds (both experiments), sim_steps, real_steps,
    probe_every overridden."""
    b = Budget(sim_seeds=2, sim_steps=3000, real_seeds=2, real_steps=50_000, probe_every=2500,
               probe_at=(100, 300, 1000, 2000, 5000), mode="quick") if quick else Budget()
    if seeds is not None:
        if seeds < 1:
            raise GrokfastError(f"--seeds {seeds}: need at least 1 seed")
        b.sim_seeds = b.real_seeds = seeds
    for name, v in (("sim_steps", sim_steps), ("real_steps", real_steps), ("probe_every", probe_every)):
        if v is not None:
            if v < 1:
                raise GrokfastError(f"--{name.replace('_', '-')} {v}: must be ≥ 1")
            setattr(b, name, int(v))
    if b.probe_every < b.probe_lag:
        raise GrokfastError(f"--probe-every {b.probe_every}: must be ≥ the probe lag {b.probe_lag}")
    b.probe_at = tuple(t for t in b.probe_at if b.probe_lag <= t <= b.real_steps)
    return b


def _backend(backend: str) -> str:
    """'auto' falls back to the reference loop where the torch backend is not installed."""
    if backend == "auto" and importlib.util.find_spec("grokfast.backends.torch") is None:
        return "reference"
    return backend


# ---------------------------------------------------------------------------- experiments
def run_simulation(b: Budget):
    """Fig. 6: paper-sim, Eq. 20 with the minimum-norm W2, b.sim_seeds seeds batched."""
    config = Config.preset("paper-sim")
    return simulate(config, seeds=range(b.sim_seeds), steps=b.sim_steps, log_every=b.sim_log_every)


def run_euler_check(b: Budget) -> dict:
    """‖E‖ of paper-sim seed 0 at simulation time t = η·min(40, sim_steps) with the paper's η and with
    η/10: how far the explicit Euler step is from the flow during the stiff initial transient."""
    config = Config.preset("paper-sim")
    t_check = config.lr * min(40, b.sim_steps)
    out = {}
    for eta in (config.lr, config.lr / 10):
        steps = max(1, round(t_check / eta))
        res = simulate(config.replace(lr=eta), seeds=[0], steps=steps, log_every=steps)
        out[eta] = dict(steps=steps, norm=float(res.history["norm_W1"][0, -1]),
                        norm_init=float(res.history["norm_W1"][0, 0]))
    return {"t": t_check, "by_eta": out}


def real_config(b: Budget) -> Config:
    log = b.real_log_every
    return Config.preset("paper-real", steps=b.real_steps, log_every=log, eval_every=log)


def run_real(b: Budget, backend: str = "auto"):
    """Fig. 5: paper-real trained by GD with the alignment probe, b.real_seeds seeds batched."""
    config = real_config(b)
    probe = AlignmentProbe(config, make_dataset(config), every=b.probe_every, lag=b.probe_lag,
                           at=b.probe_at, gd_steps=b.probe_gd_steps)
    return train(config, seeds=range(b.real_seeds), backend=_backend(backend), observers=[probe])


def run_shared(b: Budget):
    """Eq. 20 from paper-real's initialization (same seeds), long enough to cover the trained run."""
    config = real_config(b)
    t_end = gd_steps_to_sim_time(b.real_steps, config.lr, config.weight_decay)
    steps = max(1, math.ceil(t_end / b.shared_eta))
    sim_config = config.replace(lr=b.shared_eta, steps=steps, dtype="float64",
                                log_every=max(1, steps // 200), eval_every=max(1, steps // 200))
    return simulate(sim_config, seeds=range(b.real_seeds))


# ---------------------------------------------------------------------------- summaries
def _at(steps: np.ndarray, values: np.ndarray, step: int) -> float:
    """values at the recorded step `step` exactly, NaN when it was not recorded."""
    hit = np.nonzero(steps == step)[0]
    return float(values[hit[0]]) if len(hit) else float("nan")


def summarize_simulation(sim) -> dict:
    """Per seed: accuracy milestones, the grok step, train loss, ‖W1‖ init / peak / end."""
    h = sim.history
    out = {"grok_step": sim.grok_step, "seeds": sim.seeds, "rows": []}
    for i in range(len(sim.seeds)):
        st = h["step"][i]
        row = {f"acc_{s}": _at(st, h["test_acc"][i], s) for s in (500, 1000, 2000, 2250, 3000)}
        j = int(np.argmax(h["norm_W1"][i]))
        row.update(grok_step=sim.grok_step[i], max_train_loss=float(np.max(h["train_loss"][i])),
                   min_train_acc=float(np.min(h["train_acc"][i])),
                   final_test_acc=float(h["test_acc"][i, -1]),
                   norm_init=float(h["norm_W1"][i, 0]), norm_peak=float(h["norm_W1"][i, j]),
                   norm_peak_step=int(st[j]), norm_end=float(h["norm_W1"][i, -1]))
        out["rows"].append(row)
    return out


def summarize_fourier(sim) -> dict:
    """Circle statistics at init and end, over all frequencies k = 1..(p−1)/2: mean and max of
    |‖Re F_k‖/‖Im F_k‖ − 1| and |angle − 90°|, mean within / across support similarity, mean neuron
    IPR, and the number of key frequencies (holding 80 % of the Fourier power)."""
    h, dev = sim.history, fourier_deviations(sim)
    rows = []
    for i in range(len(sim.seeds)):
        row = {}
        for when, j, W1 in (("init", 0, sim.W1_init[i]), ("end", -1, sim.W1[i])):
            row[f"n_keys_{when}"] = len(key_frequencies(W1, sim.config.p, sim.config.encoding, mass=0.8))
            for name in dev:
                row[f"{name}_{when}"] = float(dev[name][i, j])
            row[f"ratio_max_dev_{when}"] = float(np.nanmax(np.abs(h["fourier_ratio"][i, j] - 1)))
            row[f"angle_max_dev_{when}"] = float(np.nanmax(np.abs(h["fourier_angle"][i, j] - 90)))
            row[f"ipr_{when}"] = float(h["ipr_W1"][i, j])
        rows.append(row)
    return {"rows": rows}


def _first_below(steps, values, threshold) -> Optional[int]:
    hit = np.nonzero(np.nan_to_num(values, nan=np.inf) <= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def summarize_real(real) -> dict:
    """Per seed: memorization (train acc 1; train loss within 10× of its final value), grok step,
    the alignment cosine's peak (value, step, where it falls), its value near grokking and at the end."""
    rows = []
    for r in real:
        h, e = r.history, r.extras
        ps, cos = e.get("probe_step", np.zeros(0)), e.get("probe_cos", np.zeros(0))
        loss_step = _first_below(h["step"], h["train_loss"], 10 * h["train_loss"][-1])
        row = dict(seed=r.config.seed, memorization_step=r.memorization_step, loss_step=loss_step,
                   grok_step=r.grok_step, final_test_acc=r.final.get("test_acc", float("nan")),
                   norm_init=float(h["norm"][0]), norm_end=r.final.get("norm", float("nan")))
        if len(cos) and np.isfinite(cos).any():
            j = int(np.nanargmax(cos))
            row.update(peak_cos=float(cos[j]), peak_step=int(ps[j]), cos_end=float(cos[-1]),
                       dist_end=float(e["probe_dist"][-1]), sigma_min_end=float(e["probe_sigma_min"][-1]))
            mem, grok = r.memorization_step, r.grok_step
            row["peak_between"] = bool(mem is not None and grok is not None and mem < ps[j] < grok)
            row["peak_after_loss_step"] = bool(loss_step is not None and ps[j] >= loss_step)
            if grok is not None:
                k = int(np.argmin(np.abs(ps - grok)))
                row.update(cos_at_grok=float(cos[k]), cos_at_grok_step=int(ps[k]))
        rows.append(row)
    return {"rows": rows}


def summarize_shared(shared, real) -> dict:
    """Simulated grok time mapped to GD steps beside the trained grok step, per seed."""
    c = real[0].config
    rows = []
    for i, r in enumerate(real):
        g = shared.grok_step[i]
        rows.append(dict(seed=r.config.seed, trained_grok=r.grok_step,
                         sim_grok_euler=g, sim_grok_time=None if g is None else g * shared.meta["eta"],
                         sim_grok_gd=None if g is None else
                         sim_time_to_gd_steps(g * shared.meta["eta"], c.lr, c.weight_decay)))
    return {"rows": rows}


def reproduce_paper(out, quick: bool = False, seeds: Optional[int] = None,
                    sim_steps: Optional[int] = None, real_steps: Optional[int] = None,
                    probe_every: Optional[int] = None, backend: str = "auto",
                    log=print) -> Path:
    """Run the experiments of `Budget` and write figures, raw results and report.md into `out`
    (held by reproducing: a rerun after an interruption keeps the finished stages)."""
    b = make_budget(quick, seeds, sim_steps, real_steps, probe_every)
    with reproducing(out, "reproduce paper", dict(budget=asdict(b), backend=backend),
                     "report.md") as o:
        out = o.dir

        def raw(name, run, load):
            return stage(o, name, run, save=lambda r: r.save(o.fresh_dir(name)),
                         load=lambda: load(out / name), log=log)

        sim = raw("sim", lambda: run_simulation(b), SimResult.load)
        euler = stage(o, "euler", lambda: run_euler_check(b),
                      save=lambda e: o.write_json("euler.json", e),
                      load=lambda: _euler(read_json(out / "euler.json")), log=log)
        real = raw("real", lambda: run_real(b, backend), ResultBatch.load)
        shared = raw("shared_sim", lambda: run_shared(b), SimResult.load)
        sums = {"sim": summarize_simulation(sim), "fourier": summarize_fourier(sim),
                "real": summarize_real(real), "shared": summarize_shared(shared, real),
                "euler": euler}

        def figures():
            plot_simulation(sim, o.path("fig6_simulation.png"))
            plot_fourier(sim, o.path("fig6_fourier.png"))
            plot_fourier_time(sim, o.path("fig6_fourier_time.png"))
            plot_alignment(real, o.path("fig5_alignment.png"))
            plot_shared(shared, real, o.path("shared_time.png"))
            plot_geometry(shared, real, o.path("geometry.png"))

        stage(o, "figures", figures, log=log)
        timings = dict(zip(STAGE_NAMES.values(), (o.stages()[k] for k in STAGE_NAMES)))
        timings["total"] = sum(timings.values())
        write_json(o.path("summary.json"), {"budget": asdict(b), "timings": timings, **sums})
        write_report(o.path("report.md"), b, sim, real, shared, sums, timings, backend)
        log(f"[reproduce] wrote {out / 'report.md'} ({timings['total']:.0f} s)")
    return out


# stage → its name in the report's timings
STAGE_NAMES = {"sim": "simulation (paper-sim)", "euler": "Euler step check (η and η/10)",
               "real": "training with the probe (paper-real)",
               "shared_sim": "simulation from paper-real's init", "figures": "figures"}


def _euler(saved: dict) -> dict:
    """run_euler_check's result read back from euler.json (its η keys as floats again)."""
    return {"t": saved["t"], "by_eta": {float(k): v for k, v in saved["by_eta"].items()}}
