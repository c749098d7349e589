"""The eight serious cases of issue 18, one test each (each failed on the code before the fix)."""
import json
import time

import pytest
from bitwise import assert_bitwise
from redteam_helpers import (
    CHUNK,
    TINY,
    assert_clean_error,
    child,
    run_cli,
    snapshot,
    tiny_args,
)

import grokfast
from grokfast import GrokfastError, Result
from grokfast.store.history import chunk_files



def interrupted_run(d, steps_at=200, every=100, **kw):
    """TINY run in d stopped (resumably) at step `steps_at`, checkpoints every `every` steps."""
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=every,
                          max_steps=steps_at, **kw)


def whole_run(d):
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100)


# 1 ---------------------------------------------------------------- divergence in the last steps
def test_1_divergence_in_last_unlogged_steps_is_reported(tmp_path, capsys):
    d = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--preset", "paper-real", "--set", "lr=3e4",
                             "--set", "steps=99", "--quiet", "--out", d)
    assert code == 1, (out, err)
    meta = json.loads((d / "result.json").read_text())
    assert meta["diverged"] and "99" in meta["diverged"], meta
    assert meta["stop_reason"] == "diverged"
    cfg = grokfast.Config.preset("paper-real", lr=3e4, steps=99)
    sw = grokfast.sweep(cfg, grid={"weight_decay": [1e-4]}, out=tmp_path / "sw", figures=False)
    row = sw.table[0]
    assert row["diverged"] is True and row["stop_reason"] == "diverged", row


# 2 ---------------------------------------------------------------- path traversal from run.json
@pytest.mark.parametrize("name", ["../../x", "/ABS"])
def test_2_model_names_from_run_json_cannot_escape(tmp_path, name):
    d = tmp_path / "a" / "b" / "run"
    interrupted_run(d)
    if name == "/ABS":
        name = str(tmp_path / "abs")
    run = json.loads((d / "run.json").read_text())
    run["models"] = [name]
    (d / "run.json").write_text(json.dumps(run))
    before = snapshot(tmp_path, skip=d)
    with pytest.raises(GrokfastError, match="run.json"):
        grokfast.train(None, resume=d)
    assert snapshot(tmp_path, skip=d) == before


# 3 ---------------------------------------------------------------- --out over a saved result
def test_3_train_out_refuses_a_saved_result(tmp_path, capsys):
    d = tmp_path / "saved"
    grokfast.train(TINY.replace(steps=40), backend="torch").save(d, curves=False)
    before = snapshot(d)
    code, out, err = run_cli(capsys, "train", *tiny_args(40), "--out", d)
    assert_clean_error(code, err, str(d))
    assert snapshot(d) == before
    assert Result.load(d).history["step"].size == 4


# 4 ---------------------------------------------------------------- two writers of one run
_TOGETHER = """
    import os, sys, time
    from grokfast import cli
    go = {go!r}
    while not os.path.exists(go):
        time.sleep(0.005)
    sys.exit(cli.main({args!r}))
"""


def _together(tmp_path, args_a, args_b, code=_TOGETHER):
    go = tmp_path / "go"
    procs = [child(code.format(go=str(go), args=[str(a) for a in args]), tmp_path)
             for args in (args_a, args_b)]
    time.sleep(2.5)  # both imported and waiting
    go.write_text("")
    return [(p.wait(120), *p.communicate()) for p in procs]


def test_4_two_fresh_runs_on_one_out(tmp_path):
    d = tmp_path / "run"
    args = ["train", *tiny_args(5000), "--out", d]
    res = _together(tmp_path, args, args)
    assert sorted(r[0] for r in res) == [0, 2], res
    loser = next(r for r in res if r[0] == 2)
    assert "error:" in loser[2] and "pid" in loser[2] and "Traceback" not in loser[2], loser
    events = [json.loads(l)["event"] for l in (d / "events.jsonl").read_text().splitlines()]
    assert events.count("started") == 1, events


def test_4_two_resumes_of_one_run(tmp_path):
    ref = whole_run(tmp_path / "ref")
    d = tmp_path / "run"
    grokfast.train(TINY.replace(steps=5000), out=d, backend="torch", chunk_steps=CHUNK,
                   checkpoint_every=100, max_steps=100)
    args = ["train", "--resume", d, "--quiet"]
    res = _together(tmp_path, args, args)
    assert sorted(r[0] for r in res) == [0, 2], res
    assert "pid" in next(r for r in res if r[0] == 2)[2]
    r = Result.load(d)
    assert r.history["step"].size == 500 and not r.interrupted
    del ref


# 5 ---------------------------------------------------------------- two new sweeps on one directory
_SWEEP = """
    import os, sys, time
    import importlib
    sw = importlib.import_module('grokfast.sweeps.api')
    from grokfast import cli
    if {slow_plan!r}:
        write = sw.write_plan
        def late_plan(*a, **k):
            time.sleep(1.0)
            write(*a, **k)
        sw.write_plan = late_plan
    else:
        run = sw.run_launch
        def slow_run(*a, **k):
            time.sleep(3.0)
            return run(*a, **k)
        sw.run_launch = slow_run
        importlib.import_module('grokfast.sweeps.local').run_launch = slow_run
    go = {go!r}
    while not os.path.exists(go):
        time.sleep(0.005)
    sys.exit(cli.main({args!r}))
"""


def test_5_two_new_sweeps_at_once_keep_plan_true(tmp_path):
    d = tmp_path / "sweep"
    base = ["sweep", "--preset", "paper-real", "--set", "steps=100", "--quiet", "--out", str(d)]
    a, b = base + ["--grid", "weight_decay=1e-4,2e-4"], base + ["--grid", "lr=0.5,1"]
    go = tmp_path / "go"
    procs = [child(_SWEEP.format(go=str(go), args=args, slow_plan=slow), tmp_path)
             for args, slow in ((a, False), (b, True))]
    time.sleep(2.5)
    go.write_text("")
    res = [(p.wait(120), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in res) == [0, 2], res
    winner = "weight_decay" if res[0][0] == 0 else "lr"
    plan = json.loads((d / "plan.json").read_text())
    assert list(plan["grid"]) == [winner], (plan["grid"], res)
    header = (d / "results.csv").read_text().splitlines()[0]
    assert header.startswith(winner)


# 6 ---------------------------------------------------------------- symlinks are not followed
def test_6_symlinked_sweep_lock_is_not_followed(tmp_path, capsys):
    d = tmp_path / "sweep"
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5]}, out=d, figures=False,
                   max_time=1e-9)
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    lock = d / "sweep.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    before = snapshot(tmp_path, skip=d)
    run_cli(capsys, "sweep", "--resume", d, "--quiet")
    assert target.read_text() == "precious\n"
    assert snapshot(tmp_path, skip=d) == before


def test_6_symlinked_events_log_is_not_followed(tmp_path):
    d = tmp_path / "run"
    interrupted_run(d)
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (d / "events.jsonl").unlink()
    (d / "events.jsonl").symlink_to(target)
    before = snapshot(tmp_path, skip=d)
    try:
        grokfast.train(None, resume=d)
    except GrokfastError:
        pass
    assert target.read_text() == "precious\n"
    assert snapshot(tmp_path, skip=d) == before


# 7 ---------------------------------------------------------------- damaged history chunks
def test_7_garbled_chunk_before_both_checkpoints_is_refused(tmp_path):
    d = tmp_path / "run"
    interrupted_run(d)
    first = chunk_files(d)[0][2]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with pytest.raises(GrokfastError, match=first.name):
        grokfast.train(None, resume=d)
    with pytest.raises(GrokfastError, match=first.name):
        Result.load(d).history["step"]


def test_7_garbled_chunk_after_previous_checkpoint_resumes_from_it(tmp_path):
    ref = whole_run(tmp_path / "ref")
    d = tmp_path / "run"
    interrupted_run(d)
    last = chunk_files(d)[-1][2]
    assert last.name.endswith("_000000000020.npz"), chunk_files(d)
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    r = grokfast.train(None, resume=d)
    assert not r.interrupted
    loaded = Result.load(d)
    assert_bitwise(dict(loaded.history), dict(ref.history), "history")
    assert_bitwise(loaded.params, ref.params, "params")


# 8 ---------------------------------------------------------------- killed before the first checkpoint
class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the process."""


def test_8_run_killed_before_first_checkpoint_restarts_in_place(tmp_path, monkeypatch, capsys,
                                                                caplog):
    ref = whole_run(tmp_path / "ref")
    d = tmp_path / "run"

    def killed(*a, **k):
        raise Killed
    with monkeypatch.context() as m:
        m.setattr("grokfast.engine.sink.RunDirSink.checkpoint", killed)
        with pytest.raises(Killed):
            whole_run(d)
    assert not (d / "checkpoint.pt").exists()
    code, out, err = run_cli(capsys, "train", "--out", d, *tiny_args())
    assert_clean_error(code, err, "--resume")
    code, out, err = run_cli(capsys, "train", "--resume", d, "--quiet")
    assert code == 0, err
    said = out + err + caplog.text
    assert "starting it over" in said, said
    loaded = Result.load(d)
    assert_bitwise(dict(loaded.history), dict(ref.history), "history")
    assert_bitwise(loaded.params, ref.params, "params")
