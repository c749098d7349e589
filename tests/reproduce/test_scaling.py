"""`grokfast reproduce scaling`: the fit and its interval, the verdict, and the command at CI size."""
import csv
import json
import math

import numpy as np
import pytest

from grokfast import GrokfastError, SweepResult
from grokfast.cli import main
from grokfast.reproduce.scaling import fit_with_interval, make_budget, summarize


def test_fit_recovers_a_known_exponent_with_an_interval_over_seeds():
    rng = np.random.default_rng(0)
    lam_eta = [1e-4, 2e-4, 4e-4, 8e-4]
    T = {s: 3.0 * np.exp(rng.normal(0, 0.2)) for s in range(8)}  # a flow time per seed
    points = [(s, x, T[s] * x ** -1.0 * np.exp(rng.normal(0, 0.05))) for s in T for x in lam_eta]
    f = fit_with_interval(points, n_boot=500)
    assert abs(f["slope"] + 1) < 0.05 and f["lo"] < -1 < f["hi"] and f["hi"] - f["lo"] < 0.2
    assert len(f["per_seed"]) == 8 and f["n_points"] == 32
    steeper = fit_with_interval([(s, x, y * x ** -0.5) for s, x, y in points], n_boot=200)
    assert steeper["hi"] < -1.3  # a wrong exponent lands outside
    flat = fit_with_interval([(0, 1e-4, 10.0)], n_boot=10)
    assert math.isnan(flat["slope"])


def _row(wd, lr, seed, grok, mem=200):
    return dict(weight_decay=wd, lr=lr, seed=seed, grok_step=grok, memorization_step=mem,
                diverged=False, error=None, stop_reason="grok" if grok else None, steps_done=1)


def test_summary_marks_where_the_law_holds_and_breaks():
    b = make_budget(weight_decays=(1e-4, 2e-4, 1.6e-3), lrs=(1.0,), seeds=3)
    table = [_row(1e-4, 1.0, s, 30_000 + 1000 * s) for s in range(3)]
    table += [_row(2e-4, 1.0, s, 15_000 + 500 * s) for s in range(3)]
    table += [_row(1.6e-3, 1.0, s, None) for s in range(3)]  # memorized, never grokked
    s = summarize(table, b)
    cells = {c["weight_decay"]: c for c in s["cells"]}
    assert cells[1e-4]["law_holds"] and cells[2e-4]["law_holds"] and not cells[1.6e-3]["law_holds"]
    assert cells[1.6e-3]["phase"] == "memorization" and s["never_grokked"] == 3
    assert abs(s["fit"]["slope"] + 1) < 0.05
    assert s["collapse_reference"] == pytest.approx(3.1)


def test_budgets_and_bad_input():
    full, quick = make_budget(), make_budget(quick=True)
    for b in (full, quick):
        assert max(b.products) / min(b.products) >= 4 and b.seeds >= 8
    assert quick.steps < full.steps
    with pytest.raises(GrokfastError, match="at least 2"):
        make_budget(seeds=1)
    with pytest.raises(GrokfastError, match="positive"):
        make_budget(lrs=(0.0,))
    assert main(["reproduce", "scaling", "--real-steps", "10"]) == 2


def test_reproduce_scaling_end_to_end(tmp_path, drawn):
    out = tmp_path / "scaling"
    # λη = 8e-4 and 1.6e-3: paper-real groks in ~2–5k steps
    rc = main(["reproduce", "scaling", "--weight-decays", "4e-4,8e-4", "--lrs", "2", "--seeds", "2",
               "--steps", "5000", "--out", str(out)])
    assert rc == 0
    assert {"scaling_grok_step.png", "scaling_collapse.png"} <= set(drawn)
    summary = json.loads((out / "summary.json").read_text())
    swept = SweepResult.load(out / "sweep")
    # each grokked model is a dot at (1/(λη), grok step), and at (λη, grok step × λη) in the collapse
    grokked = [(r["weight_decay"] * r["lr"], r["grok_step"]) for r in swept.table
               if r["grok_step"] is not None]
    assert grokked
    for name, point in (("scaling_grok_step.png", lambda le, g: (1 / le, g)),
                        ("scaling_collapse.png", lambda le, g: (le, g * le))):
        dots = [tuple(p) for pts in drawn[name][0]["points"] for p in pts]
        for le, g in grokked:
            x, y = point(le, g)
            assert any(np.isclose(a, x, rtol=1e-12) and np.isclose(b, y, rtol=1e-12)
                       for a, b in dots), (name, le, g)
    alone = SweepResult.load(out / "alone")
    assert len(swept.table) == len(alone.table) == 4 and len(alone.plan) == 4 and len(swept.plan) == 2
    # the report's numbers are the table's numbers
    grok = {(r["weight_decay"], r["seed"]): r["grok_step"] for r in swept.table}
    for c in summary["cells"]:
        steps = sorted(g for (wd, _), g in grok.items() if wd == c["weight_decay"] and g)
        assert c["grokked"] == len(steps)
        if len(steps) == 2:
            assert c["median"] == np.median(steps)
            assert c["collapse_median"] == pytest.approx(np.median(steps) * c["lam_eta"])
    assert summary["timing"]["sweep_model_steps"] == sum(r["steps_done"] for r in swept.table)
    report = (out / "report.md").read_text()
    assert "exponent −1" in report and "model-steps/s" in report and "![](scaling_collapse.png)" in report
    if math.isfinite(summary["fit"]["slope"]):
        assert f"{summary['fit']['slope']:.3f}" in report
    with open(out / "sweep" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    (out / "report.md").unlink()  # the analysis again from the saved runs, no training
    assert main(["reproduce", "scaling", "--report-only", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report
