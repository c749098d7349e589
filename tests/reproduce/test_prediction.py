"""`grokfast reproduce prediction` on a tiny setting: every predicted value is `theory.simulate` run by
hand from the same parameters, every trained value is `grokfast.train` of the same config, the
figures draw the table's numbers, --report-only redoes the analysis."""
import json

import numpy as np
import pytest
import torch

import grokfast
from grokfast import GrokfastError
from grokfast.backends.torch.paths import intra_op_threads
from grokfast.cli import main
from grokfast.model import init_params
from grokfast.reproduce.prediction import (
    PredictionBudget,
    make_budget,
    model_config,
    read_csv,
    reproduce_prediction,
    sim_config,
)
from grokfast.reproduce.prediction_report import ranks, spearman
from grokfast.theory import sim_time_to_gd_steps, simulate

# λη = 1.6e-3: paper-real memorizes by ~100 steps; of seeds 0–2 one groks by 4000 steps, and the
# short simulation (3 units of flow time) groks for some seeds and not for others
TINY = PredictionBudget(weight_decays=(8e-4,), lrs=(2.0,), seeds=3, steps=4000, sim_time=3.0,
                        sim_eta=4e-3, sim_resolution=0.04, bootstrap=200, mode="test")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prediction") / "run"
    reproduce_prediction(out, budget=TINY, log=lambda *a: None)
    return out


def _first_grok_time(sim, k):
    step = sim.grok_step[k]
    return None if step is None else step * sim.meta["eta"]


def test_trained_values_are_train_of_the_same_config(run_dir):
    rows = read_csv(run_dir / "prediction.csv")
    base = grokfast.Config.from_json((run_dir / "config.json").read_text())
    assert len(rows) == 3 and {r["seed"] for r in rows} == {0, 1, 2}
    for r in rows:
        cfg = model_config(base, r)
        res = grokfast.train(cfg, stop_at="grok")
        assert (r["memorization_step"], r["grok_step"]) == (res.memorization_step, res.grok_step)
    assert any(r["grok_step"] is None for r in rows) and any(r["grok_step"] for r in rows)


def test_predicted_values_are_simulate_by_hand(run_dir):
    rows = read_csv(run_dir / "prediction.csv")
    base = grokfast.Config.from_json((run_dir / "config.json").read_text())
    sc = sim_config(base, TINY)
    snap = np.load(run_dir / "memorization.npz")
    filled = {"init": 0, "mem": 0}
    for k, r in enumerate(rows):
        cfg = model_config(base, r)
        # W1 at the memorization step: the same config trained to that step, alone
        W1_mem = grokfast.train(cfg.replace(steps=r["memorization_step"])).params["W1"]
        assert snap["row"][k] == k and torch.equal(torch.from_numpy(snap["W1"][k]), W1_mem)
        with intra_op_threads(1, torch.device("cpu")):
            init = simulate(sc, W1_init=init_params(cfg)[0][None])
            mem = simulate(sc, W1_init=W1_mem[None])
        t_init, t_mem = _first_grok_time(init, 0), _first_grok_time(mem, 0)
        wd, lr = r["weight_decay"], r["lr"]
        expect_init = None if t_init is None else sim_time_to_gd_steps(t_init, lr, wd)
        expect_mem = None if t_mem is None else \
            r["memorization_step"] + sim_time_to_gd_steps(t_mem, lr, wd)
        assert r["predicted_from_init"] == expect_init
        assert r["predicted_from_memorization"] == expect_mem
        filled["init"] += expect_init is not None
        filled["mem"] += expect_mem is not None
    assert 0 < filled["init"] < 3 or 0 < filled["mem"] < 3  # both cases: grokked and empty


def test_figures_draw_the_table_and_the_summary(run_dir):
    rows = read_csv(run_dir / "prediction.csv")
    s = json.loads((run_dir / "summary.json").read_text())
    for name, col in (("from_init", "predicted_from_init"),
                      ("from_memorization", "predicted_from_memorization")):
        drawn = s["figures"]["scatter"][name]
        both = [[r["grok_step"], r[col]] for r in rows if r["grok_step"] and r[col]]
        assert drawn["cells"].get("0.0008,2", []) == both
        assert drawn["left_out"] == len(rows) - len(both)
        ratio = s["figures"]["cells"][name]["ratio"]
        cell = s["cells"][0][name]
        if both:
            q = [p / g for g, p in both]
            assert ratio["y"] == pytest.approx([np.median(q)]) and cell["median_ratio"] == ratio["y"][0]
            assert ratio["lo"] == pytest.approx([cell["q25"]]) and ratio["hi"] == pytest.approx([cell["q75"]])
    report = (run_dir / "report.md").read_text()
    assert "![](prediction_scatter.png)" in report and "## Where it breaks, and why" in report


def test_report_only_redoes_the_analysis(run_dir):
    saved = {n: (run_dir / n).read_text() for n in ("prediction.csv", "summary.json", "report.md")}
    for n in saved:
        (run_dir / n).unlink()
    (run_dir / "prediction_scatter.png").unlink()
    assert main(["reproduce", "prediction", "--report-only", "--out", str(run_dir)]) == 0
    for n, text in saved.items():
        assert (run_dir / n).read_text() == text, n
    assert (run_dir / "prediction_scatter.png").is_file()


@pytest.mark.slow
def test_interrupted_run_continues_to_the_same_prediction(run_dir, tmp_path, monkeypatch):
    """Ctrl-C after the sweep, then SIGTERM inside the last simulation: each rerun of the same
    command keeps the finished stages, and the third ends with run_dir's prediction.csv."""
    import os
    import signal
    import time

    from grokfast.errors import Interrupted
    from grokfast.reproduce import prediction
    out, lines = tmp_path / "run", []
    snapshots, jobs = prediction.memorization_snapshots, prediction.simulation_jobs

    def ctrl_c(*args, **kw):
        raise KeyboardInterrupt

    def sigterm_in_half(*args, **kw):
        def killed():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        return {**jobs(*args, **kw), "sim_init_half": killed}

    monkeypatch.setattr(prediction, "memorization_snapshots", ctrl_c)
    with pytest.raises(Interrupted, match="memorization.npz"):
        reproduce_prediction(out, budget=TINY, log=lines.append)
    monkeypatch.setattr(prediction, "memorization_snapshots", snapshots)
    monkeypatch.setattr(prediction, "simulation_jobs", sigterm_in_half)
    with pytest.raises(Interrupted, match="sim_init_half"):
        reproduce_prediction(out, budget=TINY, log=lines.append)
    monkeypatch.setattr(prediction, "simulation_jobs", jobs)
    reproduce_prediction(out, budget=TINY, log=lines.append)
    kept = [l for l in lines if "kept from the earlier run" in l]
    assert [l.split("]")[1].split(":")[0].strip() for l in kept] == \
        ["sweep", "sweep", "memorization.npz", "sim"]
    assert (out / "prediction.csv").read_bytes() == (run_dir / "prediction.csv").read_bytes()
    for name in ("memorization.npz", "sim/params.npz"):
        with np.load(out / name) as a, np.load(run_dir / name) as b:
            assert all(np.array_equal(a[k], b[k]) for k in b.files), name


def test_simulate_from_given_W1():
    cfg = grokfast.Config.preset("paper-real", lr=1e-2, steps=20, log_every=10, eval_every=10)
    ref = simulate(cfg, seeds=[3, 4])
    given = simulate(cfg, W1_init=ref.W1_init)
    assert given.seeds == [0, 1] and torch.equal(given.W1, ref.W1)
    assert np.array_equal(given.history["test_acc"], ref.history["test_acc"])
    with pytest.raises(GrokfastError, match="W1_init must be"):
        simulate(cfg, W1_init=torch.zeros(2, 5, 5))
    with pytest.raises(GrokfastError, match="one seed"):
        simulate(cfg, seeds=[0], W1_init=ref.W1_init)


def test_rank_statistics():
    assert list(ranks([3.0, None, 1.0, 3.0])) == [2.5, 4.0, 1.0, 2.5]
    assert spearman([1, 2, 3, None], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_budgets_and_bad_input(tmp_path):
    quick, full = make_budget(quick=True), make_budget()
    assert quick.seeds * len(quick.weight_decays) * len(quick.lrs) >= 16
    assert full.seeds * len(full.weight_decays) * len(full.lrs) > 16
    assert main(["reproduce", "prediction", "--sim-steps", "3"]) == 2
    assert main(["reproduce", "prediction", "--report-only"]) == 2
    assert main(["reproduce", "prediction", "--report-only", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "prediction", "--lrs", "x"]) == 2


def test_paper_report_links_the_prediction(run_dir, tmp_path):
    from grokfast.reproduce.prediction_text import prediction_section
    assert "Not run yet" in "\n".join(prediction_section(tmp_path))
    (tmp_path / "prediction").mkdir()
    (tmp_path / "prediction" / "summary.json").write_text((run_dir / "summary.json").read_text())
    text = "\n".join(prediction_section(tmp_path))
    assert "[prediction/report.md](prediction/report.md)" in text and "median predicted / trained" in text
