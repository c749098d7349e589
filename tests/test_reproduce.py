"""`grokfast reproduce paper` end to end at CI size: every figure, the raw results and the report."""
import json

import numpy as np
import pytest

from grokfast.cli import main
from grokfast.errors import GrokfastError
from grokfast.reproduce import make_budget
from grokfast.result import Result
from grokfast.theory import SimResult

FIGURES = ("fig6_simulation.png", "fig6_fourier.png", "fig6_fourier_time.png", "fig5_alignment.png",
           "shared_time.png", "geometry.png")


def test_reproduce_paper_quick_writes_everything(tmp_path):
    out = tmp_path / "rep"
    rc = main(["reproduce", "paper", "--quick", "--seeds", "2", "--sim-steps", "10",
               "--real-steps", "300", "--probe-every", "100", "--out", str(out)])
    assert rc == 0
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"![]({name})" in report
    for heading in ("Fig. 6", "Fig. 5", "one time axis", "σ_min(J)", "Euler check"):
        assert heading.lower() in report.lower(), heading

    sim = SimResult.load(out / "sim")
    assert sim.seeds == [0, 1] and sim.history["step"][0, -1] == 10
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["sim"]["rows"]
    # the report's numbers are the runs' numbers
    for i, row in enumerate(rows):
        assert row["max_train_loss"] == float(np.max(sim.history["train_loss"][i]))
        assert f"{row['norm_end']:.2f}" in report
    real = [Result.load(out / "real" / f"model_{i:03d}") for i in range(2)]
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
    from grokfast.reproduce import scaling_section
    assert "grokfast reproduce scaling --out" in "\n".join(scaling_section(tmp_path))
    (tmp_path / "scaling").mkdir()
    (tmp_path / "scaling" / "summary.json").write_text(json.dumps(
        {"fit": {"slope": -0.98, "lo": -1.05, "hi": -0.91}}))
    text = "\n".join(scaling_section(tmp_path))
    assert "[scaling/report.md](scaling/report.md)" in text and "-0.980" in text
