"""Red team, concurrent writers, started together and staggered: one writer per directory (an OS
lock), the second refused at once with the holder's pid; readers need no lock; the lock dies
with its process (SIGKILL included)."""
import json
import os
import signal
import time

import pytest
from bitwise import assert_bitwise
from redteam_helpers import CHUNK, TINY, child, run_cli, snapshot

import grokfast
from grokfast import GrokfastError, Result
from grokfast.store.ownership import DirLock, lock_held



_HOLD = """
    import fcntl, os, sys, time
    d, name = {d!r}, {name!r}
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {{os.getpid()}}\\n".encode())
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """holder(dir, name): another process holding dir/name's lock, until the test ends."""
    procs = []

    def hold(d, name="run.lock"):
        p = child(_HOLD.format(d=str(d), name=name), tmp_path)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p
    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_fresh_run_refused_while_another_process_holds_it(tmp_path, holder):
    d = tmp_path / "run"
    p = holder(d)
    before = snapshot(tmp_path)
    with pytest.raises(GrokfastError, match=f"pid {p.pid}.*kill {p.pid}"):
        grokfast.train(TINY, out=d, backend="torch")
    assert snapshot(tmp_path) == before


def test_resume_refused_while_another_process_holds_it(tmp_path, holder):
    d = tmp_path / "run"
    grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100,
                   max_steps=100)
    p = holder(d)
    before = snapshot(tmp_path)
    with pytest.raises(GrokfastError, match=f"pid {p.pid}"):
        grokfast.train(None, resume=d)
    assert snapshot(tmp_path) == before


def test_sweep_refused_while_held_and_new_sweep_writes_no_plan(tmp_path, holder, capsys):
    d = tmp_path / "sweep"
    p = holder(d, "sweep.lock")
    code, _, err = run_cli(capsys, "sweep", "--set", "steps=50", "--grid", "lr=0.5,1", "--quiet",
                           "--out", d)
    assert code == 2 and f"pid {p.pid}" in err
    assert not (d / "plan.json").exists()


def test_launch_of_a_sweep_held_elsewhere_is_not_touched(tmp_path, holder):
    d = tmp_path / "sweep"
    grokfast.sweep(TINY.replace(steps=50), grid={"lr": [0.5]}, out=d, figures=False,
                   max_time=1e-9)  # planned, nothing run
    p = holder(d / "launch_000")
    sw = grokfast.sweep(out=d, resume=True, figures=False)
    row = sw.table[0]
    assert row["stop_reason"] == "error" and f"pid {p.pid}" in row["error"]
    assert os.listdir(d / "launch_000") == ["run.lock"]


def test_lock_dies_with_its_process(tmp_path, holder):
    d = tmp_path / "run"
    p = holder(d)
    assert lock_held(d)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not lock_held(d)
    r = grokfast.train(TINY.replace(steps=50), out=d, backend="torch")  # the stale file is fine
    assert r.steps_done == 50


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    d = tmp_path / "run"
    with DirLock(d):
        with DirLock(d):
            assert lock_held(d)
        assert lock_held(d)
    assert not lock_held(d)


_LONG = """
    import time
    import grokfast
    from redteam_helpers import TINY
    append = grokfast.engine.sink.RunDirSink.append
    def slow(self, *a):
        time.sleep(0.05)  # ≤ 1000 steps/s: a short reference run after the kill
        return append(self, *a)
    grokfast.engine.sink.RunDirSink.append = slow
    grokfast.train(TINY.replace(steps=400000), out={d!r}, backend="torch", chunk_steps=50,
                   checkpoint_every=100)
"""


def test_staggered_writer_refused_reader_reads(tmp_path, capsys):
    """A writer running; a second one started later is refused, a reader reads what is there;
    after the writer is SIGKILLed, --resume continues bitwise."""
    d = tmp_path / "run"
    p = child(_LONG.format(d=str(d)), tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (d / "checkpoint.pt").exists():
            time.sleep(0.05)
        assert (d / "checkpoint.pt").exists(), p.communicate()
        for attempt in (["train", "--resume", d, "--quiet"],
                        ["train", "--set", "steps=100", "--out", d, "--quiet"]):
            code, _, err = run_cli(capsys, *attempt)
            assert code == 2 and f"pid {p.pid}" in err and "Traceback" not in err, err
        partial = Result.load(d)
        assert partial.interrupted and "status running" in partial.stop_reason
        assert len(partial.history["step"]) > 0
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert "status interrupted" in Result.load(d).stop_reason
    step = grokfast.store.checkpoint.load_checkpoint(d)["step"]
    grokfast.train(TINY.replace(steps=step + 100), resume=d)
    ref = grokfast.train(TINY.replace(steps=step + 100), backend="torch", chunk_steps=CHUNK)
    got = Result.load(d)
    assert_bitwise(dict(got.history), dict(ref.history), "history")
    assert_bitwise(got.params, ref.params, "params")


_RACE = """
    import os, sys, time
    import grokfast
    from redteam_helpers import TINY
    from grokfast import GrokfastError
    go = {go!r}
    while not os.path.exists(go):
        time.sleep(0.002)
    try:
        grokfast.sweep(TINY.replace(steps=300, lr={lr}), grid={{"weight_decay": [1e-4, 2e-4]}},
                       out={d!r}, figures=False)
        print("ran")
    except GrokfastError as e:
        print("refused", e)
"""


@pytest.mark.parametrize("n", [3])
def test_many_new_sweeps_together_one_runs(tmp_path, n):
    d, go = tmp_path / "sweep", tmp_path / "go"
    procs = [child(_RACE.format(go=str(go), d=str(d), lr=0.5 + i), tmp_path) for i in range(n)]
    time.sleep(3)
    go.write_text("")
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sum(o.startswith("ran") for o in outs) == 1, outs
    assert all(o.startswith(("ran", "refused")) for o in outs), outs
    winner = next(i for i, o in enumerate(outs) if o.startswith("ran"))
    plan = json.loads((d / "plan.json").read_text())
    assert plan["base"]["lr"] == 0.5 + winner
