"""report.md of `grokfast reproduce prediction` (numbers from prediction_report.summarize),
and the paragraph `reproduce paper`'s report gives it."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from .report import number as _f
from .report import write_text
from .scaling_report import COLLAPSE_TOLERANCE

NAMES = (("from_init", "from initialization"), ("from_memorization", "from memorization"))


def _cell(c) -> str:
    return f"({c['weight_decay']:g}, {c['lr']:g})"


def _ci(v, lo, hi) -> str:
    if not math.isfinite(v):
        return "—"
    return f"{v:+.2f} [{_f(lo, '{:+.2f}')}, {_f(hi, '{:+.2f}')}]"


def _ratio(p) -> str:
    if not math.isfinite(p["median_ratio"]):
        return "—"
    return f"{p['median_ratio']:.2f} ({p['q25']:.2f}–{p['q75']:.2f})"


def answer_lines(s: dict) -> list:
    """The measured answer in a few lines (report and README quote these)."""
    o = s["overall"]
    L = []
    for name, label in NAMES:
        p = o[name]
        L.append(f"- Eq. 20 {label}: median predicted / trained grok step {_ratio(p)} over "
                 f"{p['n_both']} models where both grokked ({_f(p['within_2x'], '{:.0%}')} within a "
                 f"factor 2); Spearman ρ across seeds within a cell, averaged over cells, "
                 f"{_ci(p['mean_rho'], p['mean_rho_lo'], p['mean_rho_hi'])} (95 % interval "
                 f"resampling seeds); ρ of flow times over all models {_f(p['rho_flow_time'], '{:+.2f}')}.")
    c = s["trained_seed_order"]
    L.append(f"- For scale, training against training: the seeds' grok steps in one cell against "
             f"another, Spearman ρ averaged over pairs of cells, {_ci(c['rho'], c['lo'], c['hi'])} — "
             f"how much of the seed order belongs to the seed (its initialization) at all.")
    return L


def why_lines(s: dict, b) -> list:
    """Where the prediction fails and what the runs say about why."""
    cells, out = s["cells"], []
    for name, label in NAMES:
        bad = [c for c in cells if not c[name]["holds"]]
        good = [c for c in cells if c[name]["holds"]]
        meds = [c[name]["median_ratio"] for c in cells if math.isfinite(c[name]["median_ratio"])]
        span = f" Cell medians span {min(meds):.2f}–{max(meds):.2f}." if meds else ""
        out.append(f"- {label}: the median ratio is within ±{COLLAPSE_TOLERANCE:.0%} of 1 at "
                   f"{', '.join(_cell(c) for c in good) or 'no cell'}; outside at "
                   f"{', '.join(f'{_cell(c)} {_ratio(c[name])}' for c in bad) or 'no cell'}.{span}")
    for c in cells:
        if c["trained_grokked"] < c["n"]:
            out.append(f"- {_cell(c)}: {c['n'] - c['trained_grokked']} of {c['n']} trained "
                       f"seeds never grokked within {b.steps} steps (left out of the ratios).")
        miss = [label for name, label in NAMES if c[name]["grokked"] < c["n"]]
        if miss:
            out.append(f"- {_cell(c)}: simulations that did not grok within {b.sim_time:g} units "
                       f"of flow time: " + ", ".join(
                           f"{c['n'] - c[n]['grokked']} {label}" for n, label in NAMES
                           if c[n]["grokked"] < c["n"]) + ".")
    out += _trend_lines(cells)
    d, e = s["decoupling"], s["euler"]
    out.append(f"- Decoupling: at the memorization step the trained W2 is "
               f"{d['median_W2_gap']:.2f} (IQR {d['q25']:.2f}–{d['q75']:.2f}) of ‖W2*‖ away from "
               f"the minimum-norm W2* = H⁺Y that Eq. 20 assumes; Spearman ρ between that gap and "
               f"|log(predicted / trained)| from memorization: {_f(d['rho_gap_vs_abs_log_ratio'], '{:+.2f}')}.")
    out.append(f"- The simulation's own precision: halving the Euler step moves a seed's flow "
               f"time to grok by {_f(e['median_rel_change'], '{:.0%}')} (median; max "
               f"{_f(e['max_rel_change'], '{:.0%}')}) over {e['n_both']} seeds; ρ between the two "
               f"{_f(e['rho'], '{:+.2f}')}.")
    return out


def _trend_lines(cells) -> list:
    """λη at fixed weight decay (the step size, η alone), weight decay at equal λη (finite λ)."""
    out = []
    for name, label in NAMES:
        eta = [f"wd {c['weight_decay']:g}: lr {c['lr']:g}→{d['lr']:g} {c[name]['median_ratio']:.2f}→"
               f"{d[name]['median_ratio']:.2f}"
               for c, d in itertools.combinations(cells, 2)
               if c["weight_decay"] == d["weight_decay"] and c["lr"] < d["lr"]
               and math.isfinite(c[name]["median_ratio"]) and math.isfinite(d[name]["median_ratio"])]
        lam = [f"λη {c['lam_eta']:g}: wd {c['weight_decay']:g} {c[name]['median_ratio']:.2f} vs "
               f"wd {d['weight_decay']:g} {d[name]['median_ratio']:.2f}"
               for c, d in itertools.combinations(cells, 2)
               if math.isclose(c["lam_eta"], d["lam_eta"], rel_tol=1e-9)
               and c["weight_decay"] < d["weight_decay"]
               and math.isfinite(c[name]["median_ratio"]) and math.isfinite(d[name]["median_ratio"])]
        if eta:
            out.append(f"- {label}, η alone (weight decay fixed, λη grows with lr): "
                       + "; ".join(eta) + ". A ratio that moves with lr at fixed λ is the step "
                       "size (λη too large for the flow limit).")
        if lam:
            out.append(f"- {label}, equal λη from different weight decay (the flow time is the "
                       f"same in theory): " + "; ".join(lam) + ". A ratio that moves with weight "
                       "decay at equal λη is the small-λ limit (finite λ) breaking.")
    return out


def write_report(path, b, s: dict, base) -> None:
    t = s["timing"]
    L = [f"# Eq. 20 as a predictor, model by model — `grokfast reproduce prediction` ({b.mode} mode)",
         "", "Does the decoupled flow of Eq. 20 (§5–6), run from a model's own parameters, tell when "
         "*that* trained network groks — the absolute step, and which seed groks first?", "",
         "## Setting", "",
         f"- training: paper-real (App. D; p = {base.p}, width {base.width}, ReLU, MSE (mean), full "
         f"batch GD, {base.n_train} train / {base.n_pairs - base.n_train} test pairs, split_seed "
         f"{base.split_seed}) over weight decay {', '.join(f'{v:g}' for v in b.weight_decays)} × lr "
         f"{', '.join(f'{v:g}' for v in b.lrs)} × seeds 0–{b.seeds - 1}, at most {b.steps} steps, "
         f"stop_at grok; grok step = first evaluation (every {b.log_every} steps) with test "
         f"accuracy ≥ {base.grok_threshold}. `sweep/` holds it.",
         f"- prediction: Eq. 20 (λ → 0, W2 = H⁺Y), float64 explicit Euler with step "
         f"{b.sim_eta:g} in flow time for {b.sim_time:g} units, recorded every "
         f"{b.sim_resolution:g} units, on the same training set; grok = first record with test "
         f"accuracy ≥ {base.grok_threshold}. From initialization: the seed's init_params W1 (one "
         f"simulation per seed: λ and η do not enter Eq. 20), predicted = T / (weight_decay · lr). "
         f"From memorization: W1 of the trained model at its memorization step (a second run of the "
         f"same config to that step), predicted = memorization step + T / (weight_decay · lr).",
         f"- {s['n_models']} models; {s['trained_grokked']} grokked in training. One row per model "
         f"in `prediction.csv` (empty where a run or a simulation did not grok within its budget).",
         "", "## The answer", ""] + answer_lines(s)
    L += ["", "![](prediction_scatter.png)", "", "![](prediction_cells.png)", "",
          "## Per cell", "",
          "| weight decay | lr | λη | trained grokked | median memorization | ratio from init "
          "(IQR) | ρ from init [95 %] | ratio from memorization (IQR) | ρ from memorization [95 %] |",
          "|---|---|---|---|---|---|---|---|---|"]
    for c in s["cells"]:
        i, m = c["from_init"], c["from_memorization"]
        L.append(f"| {c['weight_decay']:g} | {c['lr']:g} | {c['lam_eta']:g} | "
                 f"{c['trained_grokked']}/{c['n']} | {_f(c['median_memorization'], '{:.0f}')} | "
                 f"{_ratio(i)} | {_ci(i['rho'], i['rho_lo'], i['rho_hi'])} | {_ratio(m)} | "
                 f"{_ci(m['rho'], m['rho_lo'], m['rho_hi'])} |")
    L += ["", "Ratio: predicted / trained grok step over the cell's models where both grokked "
          "(median, interquartile range). ρ: Spearman rank correlation across the cell's seeds of "
          "predicted and trained grok step (a side that never grokked ranks last), 95 % interval "
          f"from {b.bootstrap} resamples of the seeds.", "",
          "## Where it breaks, and why", ""] + why_lines(s, b)
    e = s["euler"]
    L += ["", "## Flow time to grok per seed from initialization (Euler step η and η/2)", "",
          "| seed | " + " | ".join(str(k) for k in range(len(e["T"]))) + " |",
          "|---|" + "---|" * len(e["T"]),
          f"| η = {b.sim_eta:g} | " + " | ".join(_f(v, "{:.2f}") for v in e["T"]) + " |",
          f"| η = {b.sim_eta / 2:g} | " + " | ".join(_f(v, "{:.2f}") for v in e["T_half"]) + " |"]
    if t:
        L += ["", "## Run times", "", "| stage | wall time [s] |", "|---|---|"]
        L += [f"| {k} | {v:.1f} |" for k, v in t.items() if k != "models"]
    write_text(path, "\n".join(L) + "\n")


def prediction_section(out: Path) -> list:
    """`reproduce paper`'s pointer to `reproduce prediction`, quoting its answer when its
    summary sits in out/prediction."""
    L = ["### Eq. 20 as a predictor of each model's grok step", "",
         "`grokfast reproduce prediction` trains paper-real over weight decay × lr × seeds and "
         "simulates Eq. 20 for every model from its initialization and from its memorization "
         "step: predicted against trained grok step, per cell the median ratio and the rank "
         "correlation across seeds, and where it breaks."]
    summary = out / "prediction" / "summary.json"
    if summary.is_file():
        L += ["", "Measured ([prediction/report.md](prediction/report.md)):", ""]
        L += answer_lines(json.loads(summary.read_text()))
    else:
        L += ["", f"Not run yet for this directory: `grokfast reproduce prediction --out "
              f"{out / 'prediction'}` writes [prediction/report.md](prediction/report.md)."]
    return L
