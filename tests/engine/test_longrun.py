"""Long runs: streaming history, checkpoints and bitwise resume, early stop, profiling, event log."""
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque

import numpy as np
import pytest
import torch
from bitwise import assert_bitwise, assert_same_run
from variants import LOOP_BASE as BASE
from variants import LOOP_VARIANTS as VARIANTS

import grokfast
from grokfast import Config, GrokfastError, Result, ResultBatch, cli, engine, profiling
from grokfast.store import checkpoint as ckpt_mod
from grokfast.store import history
from grokfast.store.checkpoint import load_checkpoint, save_checkpoint
from grokfast.store.history import HistoryWriter, LazyHistory, read_events, read_run

CPU_BACKENDS = ["reference", "torch"]

# The CLI runs of the signal tests: paper-real, long enough (≥ 1 s) to be killed in the middle.
KILL_STEPS = {"reference": 2000, "torch": 8000}


def kill_config(backend):
    return Config.preset("paper-real", steps=KILL_STEPS[backend], log_every=10, eval_every=20)


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    """curves.png costs ~1.5 s a save on 2 cores and is tested in test_result.py; skip it here."""
    monkeypatch.setattr("grokfast.store.result.plot_curves", lambda result, path: None)


def final_state(directory):
    return load_checkpoint(directory)["stepper"]


# ------------------------------------------------------------------------ resume, in process
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_bitwise(tmp_path, backend, variant):
    c = VARIANTS[variant]
    whole = grokfast.train(c, backend=backend, out=tmp_path / "whole", chunk_steps=20)
    part = grokfast.train(c, backend=backend, out=tmp_path / "cut", chunk_steps=20,
                          checkpoint_every=30, max_steps=50)  # 50: inside a chunk and a log row
    assert part.interrupted and part.stop_reason == "max_steps" and part.steps_done == 50
    assert len(part.history["step"]) == 17  # steps 0, 3, …, 48
    resumed = grokfast.train(None, backend="auto", resume=tmp_path / "cut")
    assert not resumed.interrupted and resumed.steps_done == c.steps
    assert_same_run(whole, resumed)
    assert_bitwise(final_state(tmp_path / "whole"), final_state(tmp_path / "cut"), "stepper")
    assert_same_run(whole, Result.load(tmp_path / "cut"))
    if variant == "adam+ma" and backend == "reference":  # filter window and Adam moments saved
        run0 = final_state(tmp_path / "cut")["runs"][0]
        assert len(run0["filter_state"]["W1"]) == 7 and "exp_avg_sq" in run0["optimizer"]["state"][0]


def test_streamed_history_equals_in_memory_history(tmp_path):
    c = VARIANTS["adam+ma"]
    memory = grokfast.train(c, seeds=[0, 1], backend="reference")
    streamed = grokfast.train(c, seeds=[0, 1], backend="reference", out=tmp_path / "b")
    for a, b in zip(memory, streamed):
        assert isinstance(b.history, LazyHistory) and not isinstance(a.history, LazyHistory)
        assert_same_run(a, b)
    for a, b in zip(memory, ResultBatch.load(tmp_path / "b")):
        assert_same_run(a, b)
        assert b.memorization_step == a.memorization_step and b.grok_step == a.grok_step


def test_resume_extends_steps(tmp_path):
    c = VARIANTS["sgd-nesterov+ema+orthograd"]
    short = grokfast.train(c.replace(steps=60), backend="reference", out=tmp_path / "run")
    assert not short.interrupted and short.steps_done == 60
    longer = grokfast.train(c, backend="reference", resume=tmp_path / "run")
    assert_same_run(grokfast.train(c, backend="reference"), longer)
    assert Result.load(tmp_path / "run").config.steps == 120


def test_resume_from_previous_checkpoint_discards_later_history(tmp_path):
    """A kill after the history was flushed past the last checkpoint that survived."""
    c = VARIANTS["gd"]
    d = tmp_path / "run"
    grokfast.train(c, backend="reference", out=d, checkpoint_every=30, max_steps=90)
    (d / "checkpoint.prev.pt").replace(d / "checkpoint.pt")  # back to step 60; history holds 90
    assert load_checkpoint(d)["step"] == 60 and len(Result.load(d).history["step"]) == 30
    (d / ".checkpoint.pt.999999.tmp").write_bytes(b"half a checkpoint")  # left by a killed writer
    assert_same_run(grokfast.train(c, backend="reference"), grokfast.train(c, resume=d))
    assert not list(d.glob(".*.tmp"))


def test_hard_interrupt_keeps_last_checkpoint(tmp_path, monkeypatch):
    """A second Ctrl-C inside a chunk: no new checkpoint, the last one resumes bitwise."""
    c = VARIANTS["adam+ma"]
    d = tmp_path / "run"
    advance = engine.stepper_class("reference", "cpu").advance
    calls = []

    def flaky(self, step0, n, active):
        calls.append(step0)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return advance(self, step0, n, active)

    monkeypatch.setattr(engine.stepper_class("reference", "cpu"), "advance", flaky)
    with pytest.raises(KeyboardInterrupt):
        grokfast.train(c, backend="reference", out=d, chunk_steps=15, checkpoint_every=30)
    monkeypatch.undo()
    assert load_checkpoint(d)["step"] == 60 and read_run(d)["status"] == "interrupted"
    partial = Result.load(d)
    assert partial.interrupted and "partial run" in partial.stop_reason
    assert len(partial.history["step"]) == 20  # steps 0 … 57 flushed before the interrupt
    assert_same_run(grokfast.train(c, backend="reference"), grokfast.train(None, resume=d))


def test_killed_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.arange(5.0)})
    real_fsync = os.fsync

    def dies(fd):
        raise KeyboardInterrupt  # a second Ctrl-C between write and rename

    monkeypatch.setattr(history.os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"step": 2, "w": torch.arange(6.0)})
    monkeypatch.setattr(history.os, "fsync", real_fsync)
    back = load_checkpoint(tmp_path)
    assert back["step"] == 1 and torch.equal(back["w"], torch.arange(5.0))
    save_checkpoint(tmp_path, {"step": 3, "q": deque([torch.ones(2)], maxlen=4)})
    assert load_checkpoint(tmp_path)["q"].maxlen == 4
    assert load_checkpoint(tmp_path, ckpt_mod.PREVIOUS)["step"] == 1


# ------------------------------------------------------------------------ refused resumes
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "run"
    grokfast.train(BASE, backend="reference", out=d, max_steps=40, checkpoint_every=20)
    return d


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:-50] + bytes([b[-50] ^ 0xFF]) + b[-49:], "checksum"),
    (lambda b: b"PK" + b[2:], "header"),
    (lambda b: b"", "header"),
])
def test_corrupt_checkpoint_is_refused(tmp_path, saved_run, damage, words):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(saved_run, d)
    path = d / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    # the previous checkpoint verifies: the resume continues from it (issue 18)
    assert grokfast.train(None, resume=shutil.copytree(d, tmp_path / "copy")).steps_done == BASE.steps
    prev = d / "checkpoint.prev.pt"
    prev.write_bytes(damage(prev.read_bytes()))
    with pytest.raises(GrokfastError, match=f"corrupt.*{words}.*checkpoint.prev.pt"):
        grokfast.train(None, resume=d)


@pytest.mark.parametrize("change, kwargs, words", [
    (dict(lr=0.5), {}, r"lr=0.5 \(checkpoint: 1.0\)"),
    (dict(seed=4), {}, r"seed=4"),
    (dict(steps=30), {}, "below the checkpoint's step 40"),
    ({}, dict(backend="torch"), "written by backend 'reference'"),
    ({}, dict(seeds=[0, 1]), "not seeds"),
])
def test_mismatched_resume_is_refused(saved_run, change, kwargs, words):
    with pytest.raises(GrokfastError, match=words):
        grokfast.train(BASE.replace(**change), resume=saved_run, **kwargs)


def test_fresh_run_into_a_run_directory_is_refused(saved_run):
    with pytest.raises(GrokfastError, match="already holds a run.*--resume"):
        grokfast.train(BASE, backend="reference", out=saved_run)


def test_bad_long_run_options_are_refused(tmp_path):
    for kwargs, words in ((dict(stop_at="grokked"), "did you mean 'grok'"),
                          (dict(stop_patience=0), "stop_patience"),
                          (dict(max_time=-1), "max_time"),
                          (dict(checkpoint_every=10), "need a run directory"),
                          (dict(profile_steps=(5, 5)), "A < B"),
                          (dict(profile_steps="5"), "two steps"),
                          (dict(max_step=3), "no option 'max_step' \\(did you mean 'max_steps'"),
                          (dict(single=True), "train\\(\\) has no option 'single'")):
        with pytest.raises(GrokfastError, match=words):
            grokfast.train(BASE, backend="reference", **kwargs)
    with pytest.raises(GrokfastError, match="run\\(\\) has no option 'curve' \\(did you mean 'curves'"):
        engine.run([BASE], curve=False)


# ------------------------------------------------------------------------ signals, real processes
def _cli_train(out, backend, checkpoint_every):
    sets = [a for k in ("steps", "log_every", "eval_every")
            for a in ("--set", f"{k}={getattr(kill_config(backend), k)}")]
    return subprocess.Popen(
        [sys.executable, "-m", "grokfast", "train", "--preset", "paper-real", *sets, "--backend",
         backend, "--checkpoint-every", str(checkpoint_every), "--quiet", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, out, min_step):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [e["step"] for e in read_events(out) if e["event"] == "checkpoint"]
        if steps and steps[-1] >= min_step:
            return steps[-1]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the child wrote no checkpoint in 120 s")


@pytest.fixture(scope="module")
def uninterrupted():
    return {}


def _uninterrupted(cache, backend):
    if backend not in cache:
        cache[backend] = grokfast.train(kill_config(backend), backend=backend)
    return cache[backend]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sigterm_saves_then_resume_is_bitwise(tmp_path, backend, uninterrupted):
    out = tmp_path / "run"
    proc = _cli_train(out, backend, checkpoint_every=100)
    _wait_for_checkpoint(proc, out, 300)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "step/s" not in stderr  # --quiet: no progress bar
    assert "stopped: signal" in stdout and f"saved to {out}" in stdout
    events = read_events(out)
    assert events[-1]["event"] == "interrupted" and events[-1]["signal"] == "SIGTERM"
    stopped = Result.load(out)
    assert stopped.interrupted and 300 < stopped.steps_done < kill_config(backend).steps
    assert load_checkpoint(out)["step"] == stopped.steps_done
    assert_same_run(_uninterrupted(uninterrupted, backend), grokfast.train(None, resume=out))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sigkill_leaves_a_loadable_partial_run_that_resumes_bitwise(tmp_path, backend,
                                                                     uninterrupted, capsys):
    out = tmp_path / "run"
    proc = _cli_train(out, backend, checkpoint_every=20)  # checkpoints back to back: likely mid-write
    _wait_for_checkpoint(proc, out, 400)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    whole = _uninterrupted(uninterrupted, backend)
    partial = Result.load(out)
    at = load_checkpoint(out)["step"]
    assert partial.interrupted and f"last checkpoint at step {at}" in partial.stop_reason
    n = len(partial.history["step"])
    assert n >= at // 10 and n < len(whole.history["step"])
    for k in grokfast.STAT_NAMES:
        assert_bitwise(partial.history[k], whole.history[k][:n], f"partial history.{k}")
    assert_bitwise(partial.params, grokfast.train(kill_config(backend).replace(steps=at),
                                                  backend=backend).params, "checkpoint params")
    assert cli.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "status interrupted" in shown and "partial run" in shown  # a stale "running"
    assert_same_run(whole, grokfast.train(None, resume=out))


# ------------------------------------------------------------------------ early stop
STOP_CONFIG = Config(p=7, width=32, n_test=None, train_frac=0.7, pairs="ordered", encoding="concat",
                     activation="quadratic", init="normal", optimizer="adamw", lr=1e-2,
                     weight_decay=1.0, steps=300, log_every=5, eval_every=5)


def _first_streak(history, threshold, k):
    """Step of the evaluation completing k consecutive test accuracies ≥ threshold (a plain loop)."""
    run = 0
    for s, acc in zip(history["step"], history["test_acc"]):
        if np.isnan(acc):
            continue
        run = run + 1 if acc >= threshold else 0
        if run == k:
            return int(s)
    return None


# The loop's logic is the same for every backend: the fastest one available runs it.
FAST = "torch"


def test_stop_at_grok_stops_each_model_of_a_batch(tmp_path):
    # Model 0 "groks" at a low threshold early on, model 1 never reaches 1.0: the stop mechanics
    # (streak, per-model deactivation, batch end) without a 10⁴-step grokking run.
    configs = [STOP_CONFIG.replace(grok_threshold=0.1), STOP_CONFIG.replace(grok_threshold=1.0)]
    solo = [engine.run([c], backend=FAST)[0] for c in configs]
    met = _first_streak(solo[0].history, 0.1, 2)
    assert met is not None and met < 200 and _first_streak(solo[1].history, 1.0, 2) is None
    stop_step = (met // 40 + 1) * 40  # the next multiple of the chunk size
    whole = engine.run(configs, backend=FAST, chunk_steps=40, stop_at="grok",
                       stop_patience=2, out=tmp_path / "whole", single=False)
    r0, r1 = whole
    assert r0.stop_reason == "grok" and r0.steps_done == stop_step and not r0.interrupted
    assert r1.stop_reason is None and r1.steps_done == STOP_CONFIG.steps
    n0 = -(-stop_step // STOP_CONFIG.log_every)
    for k in grokfast.STAT_NAMES:  # model 0's history is its solo run's, cut at the stop
        assert_bitwise(np.asarray(r0.history[k]), solo[0].history[k][:n0], k)
    assert_bitwise(r0.params, engine.run([configs[0].replace(steps=stop_step)],
                                         backend=FAST)[0].params, "stopped params")
    assert_same_run(solo[1], r1)
    stops = [e for e in read_events(tmp_path / "whole") if e["event"] == "stopped"]
    assert stops == [dict(stops[0], model=0, reason="grok", condition_met_at=met, step=stop_step)]
    # Cut before the stop and resumed (stop_at carried by the checkpoint): the same batch.
    engine.run(configs, backend=FAST, chunk_steps=40, stop_at="grok", stop_patience=2,
               out=tmp_path / "cut", single=False, max_steps=met - met % 5)
    resumed = engine.run(configs, resume=tmp_path / "cut")
    for a, b in zip(whole, resumed):
        assert_same_run(a, b)
        assert a.stop_reason == b.stop_reason


def test_max_time_stops_and_resumes(tmp_path):
    c = BASE.replace(steps=600)
    part = grokfast.train(c, backend="reference", out=tmp_path / "run", chunk_steps=3,
                          max_time=1e-9)
    assert part.stop_reason == "max_time" and part.steps_done == 3
    assert_same_run(grokfast.train(c, backend="reference"),
                    grokfast.train(None, resume=tmp_path / "run"))


# ------------------------------------------------------------------------ events, profiling
def test_event_log(tmp_path):
    c = Config(p=7, width=16, n_test=5, steps=150, log_every=3, eval_every=6,
               activation="quadratic", loss_reduction="sum")
    engine.run([c.replace(lr=1e-2), c.replace(lr=100.0)], backend="reference", out=tmp_path,
               single=False, checkpoint_every=50)
    events = read_events(tmp_path)
    names = [e["event"] for e in events]
    assert names == ["started", "diverged", "checkpoint", "memorized", "checkpoint", "checkpoint",
                     "finished"]
    by = {e["event"]: e for e in events}
    assert by["memorized"]["model"] == 0 and by["memorized"]["step"] == 93
    assert by["diverged"]["model"] == 1 and by["diverged"]["step"] == 3  # first recorded row
    assert "lr (now 100)" in by["diverged"]["message"]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [50, 100, 150]
    assert by["finished"]["steps_done"] == [150, 3]
    assert all(a["wall"] <= b["wall"] for a, b in zip(events, events[1:]))
    r = Result.load(tmp_path / "model_001")
    assert r.diverged and len(r.history["step"]) == 1  # step 0 kept, step 3 (non-finite) not


def test_progress_bar_summarizes_a_batch(capsys):
    c = Config(p=7, width=16, n_test=5, steps=150, log_every=3, eval_every=6,
               activation="quadratic", loss_reduction="sum")
    engine.run([c.replace(lr=1e-2), c.replace(lr=100.0)], backend="reference", progress=True)
    err = capsys.readouterr().err
    assert "2 models" in err and "150/150" in err and "step/s" in err  # steps/s and ETA: tqdm's
    assert re.search(r"train \d\.\d\d–\d\.\d\d test \d\.\d\d–\d\.\d\d", err)  # ranges
    assert "‖θ‖" in err and "grokked 0/2 active 1/2" in err
    assert "model 1 (seed 0): diverged — non-finite train loss at step 3" in err


def test_nvtx_ranges_without_the_nvtx_package_go_through_torch_cuda_nvtx(monkeypatch):
    """The GPU machine has no nvtx package: a CUDA build of torch still emits every range."""
    calls = []
    monkeypatch.setattr(profiling, "_nvtx", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch._C, "_nvtx", object(), raising=False)  # a CUDA build of torch
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda msg: calls.append(("push", msg)))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: calls.append(("pop",)))
    factory, backend = profiling._range_factory()
    assert backend == "torch.cuda.nvtx"
    monkeypatch.setattr(profiling, "_RANGE", factory)
    with profiling.nvtx_range("step"):
        calls.append("inside")
    assert calls == [("push", "step"), "inside", ("pop",)]
    monkeypatch.delattr(torch._C, "_nvtx")  # a CPU-only build without the package: no-ops
    assert profiling._range_factory() == (None, "off")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("GROKFAST_NVTX", "1")
    assert profiling._range_factory() == (None, "off")


def test_profile_window_and_ranges_on_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # take the CUDA path, on a CPU
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: calls.append("start"))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: calls.append("stop"))
    c = VARIANTS["adam+ma"]
    with profiling.record_ranges() as ranges:
        r = grokfast.train(c, backend="reference", out=tmp_path / "run", chunk_steps=25,
                           profile_steps=(40, 70))
    assert calls == ["sync", "start", "sync", "stop"]
    events = [e for e in read_events(tmp_path / "run") if e["event"].startswith("profile")]
    assert [(e["event"], e["step"], e["cuda"]) for e in events] == [
        ("profile_start", 40, True), ("profile_stop", 70, True)]
    assert set(ranges) == set(profiling.RANGE_NAMES)
    assert ranges.count("forward") == ranges.count("backward") == ranges.count("update") == c.steps
    assert ranges.count("step") == 7  # chunks 0-25-40-50-70-75-100-120
    monkeypatch.undo()
    assert_same_run(grokfast.train(c, backend="reference"), r)
    r2 = grokfast.train(c, backend="reference", out=tmp_path / "cpu", profile_steps=(0, 10))
    events = [e for e in read_events(tmp_path / "cpu") if e["event"].startswith("profile")]
    assert [(e["step"], e["cuda"]) for e in events] == [(0, False), (10, False)]
    assert_same_run(r, r2)


# ------------------------------------------------------------------------ history files
def test_history_writer_chunks_and_lazy_columns(tmp_path):
    gen = np.random.default_rng(5)
    M, pieces = 3, []
    w = HistoryWriter(tmp_path, M, flush_values=40, flush_seconds=1e9)
    valid = np.array([7, 7, 7])
    for j in range(6):
        rows = {k: gen.standard_normal((M, 7)) for k in grokfast.STAT_NAMES}
        if j == 3:
            valid = np.array([7, 4, 7])  # model 1 stops inside piece 3
        elif j > 3:
            valid = np.array([7, 0, 7])
        w.append(rows, valid)
        pieces.append((rows, valid.copy()))
        assert w._buffered * M < 40 + 7 * M  # never more than one chunk in memory
    w.flush()
    files = history.chunk_files(tmp_path)
    assert len(files) == 3 and files[-1][1] == 42
    for i in range(M):
        h = LazyHistory(tmp_path, i)
        for k in grokfast.STAT_NAMES:
            want = np.concatenate([rows[k][i, : nv[i]] for rows, nv in pieces])
            assert_bitwise(h[k], want, k)
    history.truncate_history(tmp_path, files[1][1])
    assert len(history.chunk_files(tmp_path)) == 2
    files[0][2].unlink()
    with pytest.raises(GrokfastError, match="misses rows 0–"):
        LazyHistory(tmp_path, 0)


def test_partial_history_is_readable_while_running(tmp_path):
    seen = []

    class Peek:  # reads the run directory from inside the run, as `grokfast show` would
        def pause_steps(self, steps):
            return [70]

        def observe(self, step, W1, W2):
            seen.append(len(Result.load(tmp_path / "run").history["step"]))

        def extras(self):
            return [{}]

    grokfast.train(BASE, backend="reference", out=tmp_path / "run", checkpoint_every=30,
                   observers=[Peek()])
    assert seen == [20]  # rows of steps 0 … 59, flushed with the checkpoint at 60


def test_cli_resume_options(tmp_path, saved_run, capsys):
    from grokfast.cli import main
    assert main(["train", "--resume", str(saved_run), "--preset", "paper-real"]) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert main(["train", "--profile-steps", "5", "--out", str(tmp_path / "x")]) == 2
    assert "--profile-steps '5'" in capsys.readouterr().err
    import shutil
    d = tmp_path / "run"
    shutil.copytree(saved_run, d)
    assert main(["train", "--resume", str(d), "--set", "steps=150", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at step 40 of 150" in out and "150 of 150 steps" in out
    assert_same_run(grokfast.train(BASE.replace(steps=150), backend="reference"), Result.load(d))
