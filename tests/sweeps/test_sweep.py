"""Sweeps: the plan, launches, the table, bitwise equality with lone runs, resume, figures, CLI."""
import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from bitwise import assert_bitwise

# paper-real narrowed and sped up (λη = 6.4e-3): groks within ~300–1400 steps, so that
# stop_at="grok" (checked every CHUNK steps) really stops models early.
from sweep_cases import CHUNK, GRID, SEEDS, TINY, table_without  # noqa: E402

import grokfast
from grokfast import Config, GrokfastError, ResultBatch, SweepResult, cli
from grokfast.engine import SHARED_FIELDS
from grokfast.store.history import read_events
from grokfast.sweeps import (
    COLUMNS,
    LocalExecutor,
    SweepOptions,
    launch_capacity,
    model_bytes,
    parse_grid_arg,
    parse_values,
    plan,
    run_launch,
)
from grokfast.sweeps.phases import PhaseRules, cell_stats, censored_quantile, classify


# ------------------------------------------------------------------------ plan
def test_plan_packs_shared_rows_and_splits_shape_changes():
    launches = plan(TINY, GRID, SEEDS, max_models_per_launch=3)
    assert [l.name for l in launches] == ["launch_000", "launch_001", "launch_002", "launch_003"]
    assert [l.rows for l in launches] == [(0, 1, 2), (3,), (4, 5, 6), (7,)]
    for l in launches:
        assert all(getattr(c, f) == getattr(l.configs[0], f) for c in l.configs for f in SHARED_FIELDS)
        assert l.axes == ("width", "weight_decay", "lr")
    # plan order: first axis slowest, seeds innermost
    configs = [c for l in launches for c in l.configs]
    assert [(c.width, c.weight_decay, c.seed) for c in configs] == [
        (w, wd, s) for w in (32, 48) for wd in (4e-4, 8e-4) for s in SEEDS]
    assert len(plan(TINY, GRID, SEEDS)) == 2  # no cap: one launch per width
    # a memory budget of 2.5 models' worth packs 2 per launch
    per_model = model_bytes(TINY.replace(width=48))
    assert launch_capacity(TINY.replace(width=48), launch_memory=2.5 * per_model) == 2
    assert model_bytes(TINY.replace(optimizer="adam")) > model_bytes(TINY.replace(optimizer="gd"))
    assert model_bytes(TINY.replace(dtype="float64")) > model_bytes(TINY)


def test_grid_values_and_errors():
    assert parse_values("weight_decay", "logspace:1e-5:1e-2:4") == [1e-5, 1e-4, 1e-3, 1e-2]
    assert parse_values("lr", "linspace:0.5:1:3") == [0.5, 0.75, 1.0]
    assert parse_values("width", "logspace:16:256:5") == [16, 32, 64, 128, 256]
    assert parse_values("split_seed", "range:0:3") == [0, 1, 2]
    assert parse_grid_arg("optimizer=sgd,adam") == ("optimizer", ["sgd", "adam"])
    assert parse_grid_arg("train_frac=0.3,0.5") == ("train_frac", [0.3, 0.5])
    for text, words in (("weight_decay", "NAME=VALUES"),
                        ("weight_decy=1e-4", "did you mean 'weight_decay'"),
                        ("lr=", "separated by commas"),
                        ("lr=0.1,,0.2", "separated by commas"),
                        ("lr=logspace:1:2", "logspace:A:B:N"),
                        ("lr=logspace:0:1:3", "positive ends"),
                        ("width=abc", "cannot read"),
                        ("seed=0,1", "--seeds")):
        with pytest.raises(GrokfastError, match=words):
            parse_grid_arg(text)
    for grid, words in (({"lr": []}, "empty"), ({"lr": [0.1, 0.1]}, "twice"),
                        ({"lrr": [0.1]}, "did you mean 'lr'"),
                        ({"p": [7, 8], "operation": ["div"]}, "grid point p=8")):
        with pytest.raises(GrokfastError, match=words):
            plan(TINY, grid, [0])
    with pytest.raises(GrokfastError, match="seeds is empty"):
        plan(TINY, {}, [])
    with pytest.raises(GrokfastError, match="unknown option 'stop_att'.*did you mean 'stop_at'"):
        grokfast.sweep(TINY, grid={"lr": [0.1]}, stop_att="grok")


# ------------------------------------------------------------------------ bitwise = alone
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    res = grokfast.sweep(TINY, grid=GRID, seeds=SEEDS, out=out, backend="torch", stop_at="grok",
                         max_models_per_launch=3, chunk_steps=CHUNK)
    return res


def test_every_model_of_a_sweep_equals_it_trained_alone(swept):
    assert swept.complete and len(swept.table) == 8 and len(swept.plan) == 4
    stopped = 0
    for i, (launch, row) in enumerate(zip([l for l in swept.plan for _ in l.rows], swept.table)):
        c = launch.configs[launch.rows.index(i)]
        assert (row["width"], row["weight_decay"], row["seed"]) == (c.width, c.weight_decay, c.seed)
        alone = grokfast.train(c, backend="torch", stop_at="grok", chunk_steps=CHUNK)
        got = swept.result(i)
        for k in grokfast.STAT_NAMES:
            assert_bitwise(np.asarray(got.history[k]), np.asarray(alone.history[k]),
                           f"row {i} history.{k}")
        assert_bitwise(got.params, alone.params, f"row {i} params")
        f = alone.final
        assert table_without([row], "wall_time", "launch") == table_without([dict(
            width=c.width, weight_decay=c.weight_decay, lr=c.lr, seed=c.seed,
            memorization_step=alone.memorization_step, grok_step=alone.grok_step,
            final_train_loss=f["train_loss"], final_train_acc=f["train_acc"],
            final_test_loss=f["test_loss"], final_test_acc=f["test_acc"], final_norm=f["norm"],
            steps_done=alone.steps_done, stop_reason=alone.stop_reason,
            diverged=bool(alone.diverged), diverged_steps=None, error=None)], "wall_time", "launch")
        stopped += row["stop_reason"] == "grok"
    assert stopped >= 4  # early stops happened, at the steps a lone run stops at


def test_default_chunk_is_a_lone_models(tmp_path):
    """Without chunk_steps, a launch of 3 models uses the chunk of one model alone (its stop_at
    granularity), not the batch's own preferred chunk."""
    from grokfast.backends.torch import TorchStepper
    from grokfast.data import make_dataset
    c = TINY.replace(width=256, steps=40)
    lone = TorchStepper([c], make_dataset(c), "cpu").preferred_chunk
    batch = TorchStepper([c] * 40, make_dataset(c), "cpu").preferred_chunk
    assert lone != batch
    launch = plan(c, {"weight_decay": [1e-4, 2e-4]}, range(20))[0]
    run_launch(launch, tmp_path, SweepOptions(backend="torch"))
    started = read_events(tmp_path / launch.name)[0]
    assert started["event"] == "started" and started["chunk"] == -(-lone // 10) * 10


def test_sweep_directory_table_and_figures(swept, drawn):
    d = swept.dir
    with open(d / "results.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        lines = list(reader)
    assert header == ["width", "weight_decay", "lr", *COLUMNS]
    assert len(lines) == 8
    for r, line in zip(swept.table, lines):  # empty cell exactly where a step is None
        assert (line[header.index("grok_step")] == "") == (r["grok_step"] is None)
    # stop_at="grok": a model that grokked stopped for it, one that did not ran every step
    for r in swept.table:
        if r["grok_step"] is None:
            assert r["stop_reason"] is None and r["steps_done"] == TINY.steps, r
        else:
            assert r["grok_step"] < r["steps_done"] <= TINY.steps, r
            assert r["stop_reason"] == "grok" or r["steps_done"] == TINY.steps, r
    assert SweepResult.load(d).table == swept.table
    saved = json.loads((d / "plan.json").read_text())
    assert [r["launch"] for r in saved["rows"]] == [l.name for l in swept.plan for _ in l.rows]
    written = swept.plot()
    assert sorted(p.name for p in written) == sorted(drawn) == [
        "phase_width__weight_decay.png", "time_to_grok_weight_decay.png", "time_to_grok_width.png"]
    assert not (d / "figures.error.txt").exists()
    # the time-to-grok figure shows every grok step of the table as a dot, at its width
    dots = np.concatenate([p for p in drawn["time_to_grok_width.png"][0]["points"]] or [np.zeros((0, 2))])
    grokked = sorted((float(r["width"]), float(r["grok_step"])) for r in swept.table
                     if r["grok_step"] is not None)
    assert sorted(map(tuple, dots)) == grokked
    # the phase diagram labels each (width, weight decay) cell with its grokked / seeds count
    texts = drawn["phase_width__weight_decay.png"][0]["texts"]
    for w in GRID["width"]:
        for wd in GRID["weight_decay"]:
            cell = [r for r in swept.table if r["width"] == w and r["weight_decay"] == wd]
            n_grok = sum(r["grok_step"] is not None for r in cell)
            assert any(t.endswith(f"{n_grok}/{len(cell)}") for t in texts), (w, wd, texts)


def test_resume_of_a_finished_sweep_changes_nothing(swept):
    events = read_events(swept.dir / "launch_000")
    again = grokfast.sweep(None, out=swept.dir, resume=True, figures=False)
    assert again.table == swept.table
    assert read_events(swept.dir / "launch_000") == events  # nothing ran again


def test_a_sweep_running_elsewhere_is_not_resumed_twice(swept):
    import fcntl
    with open(swept.dir / "sweep.lock", "w") as held:  # as a running `grokfast sweep` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242\n")
        held.flush()
        with pytest.raises(GrokfastError, match="being written by pid 4242"):
            grokfast.sweep(None, out=swept.dir, resume=True, figures=False)
    assert grokfast.sweep(None, out=swept.dir, resume=True, figures=False).table == swept.table


def test_show_summarizes_a_sweep(swept, capsys):
    assert cli.main(["show", str(swept.dir)]) == 0
    out = capsys.readouterr().out
    assert "sweep finished, 4 launches (4 done), 8 of 8 models" in out
    assert "weight_decay" in out and "comprehension:" in out


# ------------------------------------------------------------------------ phases
def test_phase_rules():
    rules = PhaseRules(comprehension_ratio=10)
    row = dict(memorization_step=100, grok_step=900, error=None)
    assert classify(row, rules) == "comprehension"
    assert classify({**row, "grok_step": 1100}, rules) == "grokking"
    assert classify({**row, "grok_step": None}, rules) == "memorization"
    assert classify({**row, "grok_step": None, "memorization_step": None}, rules) == "confusion"
    assert classify({**row, "error": "RuntimeError: x"}, rules) is None
    assert classify({**row, "grok_step": 1100}, PhaseRules(comprehension_ratio=20)) == "comprehension"
    assert censored_quantile([100, 200, None], 0.5) == 200
    assert censored_quantile([100, None, None], 0.5) == float("inf")
    assert censored_quantile([100, 300], 0.5) == 200
    s = cell_stats([dict(memorization_step=10, grok_step=g, error=None) for g in (50, 500, 600, None)])
    assert (s["n"], s["grokked"], s["phase"]) == (4, 3, "grokking")
    assert s["counts"] == dict(comprehension=1, grokking=2, memorization=1, confusion=0)
    with pytest.raises(GrokfastError, match="≥ 1"):
        PhaseRules(comprehension_ratio=0.5)


# ------------------------------------------------------------------------ errors, old form
def test_a_failing_launch_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    import grokfast.sweeps.launch as launch
    real_run = launch.run

    def run(configs, **kw):
        if configs[0].width == 32:
            raise RuntimeError("out of memory (simulated)")
        return real_run(configs, **kw)

    monkeypatch.setattr(launch, "run", run)
    res = grokfast.sweep(TINY.replace(steps=20), grid={"width": [24, 32]}, seeds=[0, 1],
                         out=tmp_path / "s", backend="torch", figures=False)
    bad = [r for r in res.table if r["width"] == 32]
    good = [r for r in res.table if r["width"] == 24]
    assert [r["error"] for r in bad] == ["RuntimeError: out of memory (simulated)"] * 2
    assert all(r["stop_reason"] == "error" and r["grok_step"] is None for r in bad)
    assert all(r["error"] is None and r["steps_done"] == 20 for r in good)
    assert "out of memory" in (tmp_path / "s" / "launch_001" / "error.txt").read_text()
    assert cli.main(["show", str(tmp_path / "s")]) == 0
    monkeypatch.setattr(launch, "run", real_run)  # a resume retries the failed launch
    again = grokfast.sweep(None, out=tmp_path / "s", resume=True, figures=False)
    assert all(r["error"] is None for r in again.table)


def test_keyword_form_keeps_one_launch_and_returns_a_batch():
    batch = grokfast.sweep(TINY.replace(steps=10), seed=range(2), weight_decay=[1e-4, 1e-3],
                           backend="torch")
    assert isinstance(batch, ResultBatch) and len(batch) == 4
    assert [(r.config.seed, r.config.weight_decay) for r in batch] == [
        (0, 1e-4), (0, 1e-3), (1, 1e-4), (1, 1e-3)]


def test_local_executor_stops_at_the_time_budget(tmp_path):
    # enough steps that the first launch outlasts the budget at any speed (the native loop runs
    # this tiny model at ~10⁵ steps/s: 20 000 steps once finished inside 0.2 s)
    launches = plan(TINY.replace(steps=400_000, weight_decay=1e-4, lr=1.0), {"width": [24, 32]},
                    [0])
    done = []
    opts = SweepOptions(backend="torch", max_time=0.2)
    LocalExecutor().run(launches, tmp_path, opts, lambda l, rows: done.append((l.name, rows)))
    assert [name for name, _ in done] == ["launch_000"]  # the second never starts
    assert done[0][1][0]["stop_reason"] == "max_time" and done[0][1][0]["steps_done"] < 400_000
    rows = run_launch(launches[0], tmp_path, SweepOptions(backend="torch"))  # resumes it
    assert rows[0]["steps_done"] == 400_000 and rows[0]["stop_reason"] is None


# ------------------------------------------------------------------------ CLI, SIGKILL, resume
def grokfast_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "grokfast", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, words", [
    (["--grid", "weight_decay"], "NAME=VALUES"),
    (["--grid", "wieght_decay=1e-4"], "did you mean 'weight_decay'"),
    (["--grid", "lr=logspace:1e-3:1"], "logspace:A:B:N"),
    (["--grid", "lr=0.1", "--grid", "lr=0.2"], "twice"),
    (["--grid", "lr=0.1", "--cpus-per-launch", "2"], "--ray"),
    (["--grid", "lr=0.1", "--resume", "x"], "drop --preset"),
    (["--resume", "nowhere"], "not a sweep directory"),
])
def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", *args]) == 2
    assert words in capsys.readouterr().err


def test_cli_sweep_then_show(tmp_path):
    out = tmp_path / "s"
    sets = [a for s in ("p=7", "width=16", "n_test=5", "steps=200", "log_every=10") for a in ("--set", s)]
    p = grokfast_cli("sweep", *sets, "--grid", "weight_decay=logspace:1e-4:1e-3:2", "--grid",
                     "lr=0.5,1", "--seeds", "0:2", "--backend", "torch", "--out", str(out),
                     cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "8 models in 1 launch" in p.stdout and "results: " in p.stdout
    assert "model-step/s" in p.stderr and "models 8/8 done" in p.stderr  # the sweep's bar
    res = SweepResult.load(out)
    assert [(r["weight_decay"], r["lr"], r["seed"]) for r in res.table] == [
        (wd, lr, s) for wd in (1e-4, 1e-3) for lr in (0.5, 1.0) for s in (0, 1)]
    s = grokfast_cli("show", str(out), cwd=tmp_path)
    assert s.returncode == 0 and "sweep finished" in s.stdout
    bad = grokfast_cli("sweep", "--grid", "lrr=1", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'lr'" in bad.stderr and "Traceback" not in bad.stderr


KILL_SETS = ["p=7", "width=16", "n_test=5", "steps=6000", "log_every=10", "eval_every=20",
             "lr=0.5", "weight_decay=1e-3"]


def _cli_sweep(out):
    sets = [a for s in KILL_SETS for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", "grokfast", "sweep", *sets, "--grid", "width=16,24,32",
         "--seeds", "0:2", "--backend", "torch", "--checkpoint-every", "100", "--quiet",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_ends_with_the_uninterrupted_table(tmp_path):
    out = tmp_path / "killed"
    proc = _cli_sweep(out)
    deadline = time.monotonic() + 180
    while True:  # kill in the middle of the second launch, after a checkpoint
        steps = [e["step"] for e in read_events(out / "launch_001") if e["event"] == "checkpoint"]
        if steps and 1000 <= steps[-1] < 6000:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint of launch_001 in 180 s"
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = SweepResult.load(out)
    assert [r["launch"] for r in partial.table] == ["launch_000"] * 2
    assert partial.status["status"] == "interrupted"  # its "running" is stale: no lock held
    events0 = read_events(out / "launch_000")

    assert cli.main(["sweep", "--resume", str(out), "--quiet"]) == 0
    resumed = SweepResult.load(out)
    whole = grokfast.sweep(kill_base(), grid={"width": [16, 24, 32]},
                           seeds=[0, 1], out=tmp_path / "whole", backend="torch", figures=False)
    assert resumed.complete and len(resumed.table) == 6
    assert table_without(resumed.table, "wall_time") == table_without(whole.table, "wall_time")
    assert read_events(out / "launch_000") == events0  # the finished launch was kept
    assert [e["event"] for e in read_events(out / "launch_001")].count("resumed") == 1
    for i in range(6):
        assert_bitwise(resumed.result(i).params, whole.result(i).params, f"row {i} params")


def kill_base():
    base = Config.preset("paper-real")
    for s in KILL_SETS:
        base = base.with_setting(s)
    return base


def test_a_diverging_model_is_a_row_not_a_failure(tmp_path):
    base = Config(p=7, width=16, n_test=5, activation="quadratic", loss_reduction="sum",
                  steps=400, log_every=2, eval_every=2)
    res = grokfast.sweep(base, grid={"lr": [1e-3, 1.0]}, seeds=[0], out=tmp_path / "s",
                         backend="torch", figures=False)
    calm, wild = res.table
    assert wild["diverged"] is True and wild["stop_reason"] == "diverged" and wild["error"] is None
    assert 0 < wild["steps_done"] < 400
    assert calm["diverged"] is False and calm["steps_done"] == 400 and calm["final_train_loss"] > 0
    wild_run = res.result(1)  # its history up to the divergence is kept, every 2 steps, finite
    steps = np.asarray(wild_run.history["step"])
    assert wild_run.diverged and np.array_equal(steps, np.arange(0, wild["steps_done"], 2))
    assert np.isfinite(np.asarray(wild_run.history["train_loss"])).all()


def test_dry_run_prints_the_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "--set", "steps=10", "--grid", "width=16,32", "--grid",
                     "lr=0.5,1", "--seeds", "0:3", "--max-models-per-launch", "4",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 models in 4 launches (4, 2, 4, 2 models)" in out
    assert "launch_003: rows 9–11, 3 models" not in out and "launch_003: rows 10–11, 2 models" in out
    assert not (tmp_path / "runs").exists()


def test_a_signal_caught_inside_a_launch_reaches_the_sweep():
    """A Ctrl-C that the launch's own handler takes (say in its last chunk, so that the launch
    still finishes) must stop the sweep before its next launch."""
    import os

    from grokfast.engine.signals import StopRequest as _StopRequest
    outer = _StopRequest().__enter__()
    try:
        inner = _StopRequest().__enter__()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        finally:
            inner.__exit__()
        assert inner.requested and outer.requested and outer.signal == "SIGTERM"
    finally:
        outer.__exit__()
