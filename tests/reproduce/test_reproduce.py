"""`grokfast reproduce paper` end to end at CI size: every figure, the raw results and the report."""
import json

import numpy as np
import pytest

from grokfast.cli import main
from grokfast.errors import GrokfastError
from grokfast.reproduce.paper import make_budget
from grokfast.store.result import Result
from grokfast.theory import SimResult

FIGURES = ("fig6_simulation.png", "fig6_fourier.png", "fig6_fourier_time.png", "fig5_alignment.png",
           "shared_time.png", "geometry.png")


def _has_line(axes: dict, y) -> bool:
    """One of the axes' lines draws exactly the finite values of y."""
    y = np.asarray(y, dtype=float)
    return any(np.array_equal(ly, y[np.isfinite(y)]) for _, ly in axes["lines"])


def test_reproduce_paper_quick_writes_everything(tmp_path, drawn):
    out = tmp_path / "rep"
    rc = main(["reproduce", "paper", "--quick", "--seeds", "2", "--sim-steps", "10",
               "--real-steps", "300", "--probe-every", "100", "--out", str(out)])
    assert rc == 0
    assert set(FIGURES) <= set(drawn) and all((out / name).is_file() for name in FIGURES)
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"![]({name})" in report
    for heading in ("Fig. 6", "Fig. 5", "one time axis", "σ_min(J)", "Euler check"):
        assert heading.lower() in report.lower(), heading

    sim = SimResult.load(out / "sim")
    assert sim.seeds == [0, 1] and sim.history["step"][0, -1] == 10
    # the figures draw the runs' numbers: each seed's test accuracy, ‖W1‖ and alignment cosine
    fig6 = drawn["fig6_simulation.png"]
    for i in range(2):
        assert _has_line(fig6[0], sim.history["test_acc"][i]), f"fig6 test acc, seed {i}"
        assert _has_line(fig6[2], sim.history["norm_W1"][i]), f"fig6 ‖W1‖, seed {i}"
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["sim"]["rows"]
    # the report's numbers are the runs' numbers
    for i, row in enumerate(rows):
        assert row["max_train_loss"] == float(np.max(sim.history["train_loss"][i]))
        assert f"{row['norm_end']:.2f}" in report
    real = [Result.load(out / "real" / f"model_{i:03d}") for i in range(2)]
    for i, r in enumerate(real):
        assert _has_line(drawn["fig5_alignment.png"][1], r.extras["probe_cos"]), f"fig5 cos {i}"
        assert _has_line(drawn["fig5_alignment.png"][0], r.history["train_loss"]), f"fig5 loss {i}"
    for r, row in zip(real, summary["real"]["rows"]):
        # the quick budget's early probe steps ≤ 300 (100, 300) and every 100
        assert r.extras["probe_step"].tolist() == [100, 200, 300]
        assert row["peak_cos"] == float(np.nanmax(r.extras["probe_cos"]))
        assert f"{row['peak_cos']:.3f}" in report
    assert summary["budget"]["mode"] == "quick"


def test_budgets():
    full, quick = make_budget(), make_budget(quick=True)
    assert (full.sim_seeds, full.sim_steps, full.real_seeds, full.real_steps) == (5, 5000, 5, 100_000)
    assert quick.real_steps < full.real_steps and quick.sim_seeds < full.sim_seeds
    small = make_budget(quick=True, seeds=3, sim_steps=10, real_steps=100, probe_every=50)
    assert (small.sim_seeds, small.real_seeds, small.sim_steps) == (3, 3, 10)
    assert all(10 <= t <= 100 for t in small.probe_at)
    with pytest.raises(GrokfastError):
        make_budget(probe_every=5)
    with pytest.raises(GrokfastError):
        make_budget(seeds=0)


def test_paper_report_links_the_scaling_report(tmp_path):
    from grokfast.reproduce.paper_report import scaling_section
    assert "grokfast reproduce scaling --out" in "\n".join(scaling_section(tmp_path))
    (tmp_path / "scaling").mkdir()
    (tmp_path / "scaling" / "summary.json").write_text(json.dumps(
        {"fit": {"slope": -0.98, "lo": -1.05, "hi": -0.91}}))
    text = "\n".join(scaling_section(tmp_path))
    assert "[scaling/report.md](scaling/report.md)" in text and "-0.980" in text
