"""`grokfast reproduce hierarchy` on a tiny setting: the files, each rung's value traced back to its
own run (train of the rung's config, simulate_manifold by hand), --report-only rebuilding every file
bitwise, and bad input."""
import json

import numpy as np
import pytest
import torch

import grokfast
from grokfast import GrokfastError
from grokfast.backends.torch.paths import intra_op_threads
from grokfast.cli import main
from grokfast.reproduce.hierarchy import HierarchyBudget, make_budget, reproduce_hierarchy
from grokfast.reproduce.hierarchy_report import LEVELS
from grokfast.reproduce.prediction import model_config
from grokfast.theory.manifold_sim import simulate_manifold

# λη = 1.6e-3 (as test_prediction's TINY): paper-real memorizes by ~100 steps and some seeds grok
# within 4000; short flows (Eq. 20 τ ≤ 2, the manifold flow τ ≤ 0.1) so the test stays in seconds
TINY = HierarchyBudget(weight_decays=(8e-4,), lrs=(2.0,), seeds=2, steps=4000, log_every=50,
                       sim_time=2.0, sim_eta=4e-3, sim_resolution=0.04, tau_max=0.1,
                       record_every=0.05, bootstrap=100, mode="test")
FILES = ("hierarchy.csv", "summary.json", "report.md", "hierarchy_ladder.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hierarchy") / "run"
    reproduce_hierarchy(out, budget=TINY, log=lambda *a: None)
    return out


def read_rows(path):
    import csv
    with open(path, newline="") as f:
        return [{k: None if v == "" else float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_files_and_columns(run_dir):
    for name in FILES:
        assert (run_dir / name).is_file(), name
    rows = read_rows(run_dir / "hierarchy.csv")
    assert len(rows) == 2 and all(lv in rows[0] for lv in LEVELS)
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s["levels"]) == set(LEVELS) and s["answer"]
    assert "## The ladder" in (run_dir / "report.md").read_text()


def test_gd_rungs_are_train_of_their_configs(run_dir):
    """L1 at lr/4 and L2 at wd/2 of one model: grokfast.train of that config, in L0-equivalent steps."""
    rows = read_rows(run_dir / "hierarchy.csv")
    base = grokfast.Config.from_json((run_dir / "config.json").read_text())
    r = rows[0]
    cfg = model_config(base, dict(weight_decay=r["weight_decay"], lr=r["lr"], seed=int(r["seed"])))
    for level, k, c in (("L1_lr4", 4, cfg.replace(lr=cfg.lr / 4)),
                        ("L2_wd2", 2, cfg.replace(weight_decay=cfg.weight_decay / 2))):
        res = grokfast.train(c.replace(steps=k * TINY.steps, log_every=k * TINY.log_every,
                                       eval_every=k * TINY.log_every), stop_at="grok")
        assert r[level] == (None if res.grok_step is None else res.grok_step / k), level


def test_manifold_rungs_are_simulate_manifold_by_hand(run_dir):
    rows = read_rows(run_dir / "hierarchy.csv")
    base = grokfast.Config.from_json((run_dir / "config.json").read_text())
    snap = np.load(run_dir / "memorization.npz")
    k = 0
    i = int(snap["row"][k])
    with intra_op_threads(1, torch.device("cpu")):
        res = simulate_manifold(base, torch.from_numpy(snap["W1"][k]).double(),
                                torch.from_numpy(snap["W2"][k]).double(), tau_max=TINY.tau_max,
                                record_every=TINY.record_every, rtol=TINY.rtol, h0=0.01,
                                h_max=0.05, h_min=TINY.h_min, stop_at_grok=True)
    tau = res.grok_tau()[0]
    r = rows[i]
    expect = None if tau is None else r["memorization_step"] + tau / (r["weight_decay"] * r["lr"])
    assert r["L3"] == expect


def test_report_only_rebuilds_every_file_bitwise(run_dir):
    saved = {n: (run_dir / n).read_bytes() for n in FILES}
    for n in saved:
        (run_dir / n).unlink()
    assert main(["reproduce", "hierarchy", "--report-only", "--out", str(run_dir)]) == 0
    for n, data in saved.items():
        assert (run_dir / n).read_bytes() == data, n


def test_budgets_and_bad_input(tmp_path):
    assert make_budget(quick=True).mode == "quick" and make_budget().seeds >= 2
    with pytest.raises(GrokfastError, match="--seeds"):
        make_budget(seeds=1)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(GrokfastError, match="missing or empty directory"):
        reproduce_hierarchy(tmp_path / "x", budget=TINY)
    assert main(["reproduce", "hierarchy", "--report-only", "--out", str(tmp_path / "none")]) != 0


def test_paper_report_links_the_hierarchy(run_dir, tmp_path):
    from grokfast.reproduce.hierarchy_text import hierarchy_section
    assert "Not run yet" in "\n".join(hierarchy_section(tmp_path))
    (tmp_path / "hierarchy").mkdir()
    (tmp_path / "hierarchy" / "summary.json").write_text((run_dir / "summary.json").read_text())
    text = "\n".join(hierarchy_section(tmp_path))
    assert "[hierarchy/report.md](hierarchy/report.md)" in text
    assert json.loads((run_dir / "summary.json").read_text())["answer"] in text
