"""Red team, kills at many points (fault injection: a BaseException that nothing catches stands
for SIGKILL, leaving the half-written temporary file a kill leaves; and one real SIGKILL): the
directory stays truthful and `--resume` finishes it bitwise equal to an uninterrupted run."""
import json
import os
import signal
import time

import pytest
from bitwise import assert_bitwise
from redteam_helpers import CHUNK, TINY, child

import grokfast
from grokfast import Result


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the process."""



@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    import grokfast.store.result as r
    plot, r.plot_curves = r.plot_curves, lambda result, path: None
    out = grokfast.train(TINY, out=tmp_path_factory.mktemp("ref") / "run", backend="torch",
                         chunk_steps=CHUNK, checkpoint_every=100)
    r.plot_curves = plot
    return out


def run(d):
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100)


def finish_and_compare(d, ref):
    grokfast.train(None, resume=d)
    got = Result.load(d)
    assert not got.interrupted and got.steps_done == TINY.steps
    assert_bitwise(dict(got.history), dict(ref.history), "history")
    assert_bitwise(got.params, ref.params, "params")
    assert json.loads((d / "run.json").read_text())["status"] == "finished"
    assert not list(d.rglob(".*.tmp"))


def kill_writes(monkeypatch, module, match, nth):
    """The nth atomic write (through module.atomic_write) of a file whose name contains `match`
    leaves half a temporary file and kills the process."""
    import grokfast.store.history as h
    real, seen = h.atomic_write, []

    def fake(path, write):
        if match in os.path.basename(str(path)):
            seen.append(path)
            if len(seen) == nth:
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(b"PK\x03\x04 half a file")
                raise Killed
        return real(path, write)
    monkeypatch.setattr(f"{module}.atomic_write", fake)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_killed_inside_a_chunk_write(tmp_path, monkeypatch, ref, nth):
    d = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_writes(m, "grokfast.store.history", "chunk_", nth)
        with pytest.raises(Killed):
            run(d)
    finish_and_compare(d, ref)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_killed_inside_a_checkpoint_write(tmp_path, monkeypatch, ref, nth):
    d = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_writes(m, "grokfast.store.checkpoint", "checkpoint.pt", nth)
        with pytest.raises(Killed):
            run(d)
    assert (d / "checkpoint.pt").exists() == (nth > 1)  # nth 1: it starts over in place
    finish_and_compare(d, ref)


def test_killed_between_keeping_previous_and_the_rename(tmp_path, monkeypatch, ref):
    import grokfast.store.checkpoint as ck
    d = tmp_path / "run"
    real, calls = ck._keep_previous, []

    def then_killed(path, prev):
        real(path, prev)
        calls.append(1)
        if len(calls) == 2:
            raise Killed
    with monkeypatch.context() as m:
        m.setattr(ck, "_keep_previous", then_killed)
        with pytest.raises(Killed):
            run(d)
    finish_and_compare(d, ref)


@pytest.mark.parametrize("name, module", [("params.npz", "grokfast.store.history"),
                                          ("result.json", "grokfast.store.history"),
                                          ("run.json", "grokfast.store.history"),
                                          ("config.json", "grokfast.store.history")])
def test_killed_while_saving_the_result(tmp_path, monkeypatch, ref, name, module):
    d = tmp_path / "run"
    import grokfast.engine.sink as sink
    import grokfast.store.result as res
    real = res.atomic_write
    finishing = []

    def fake(path, write):
        if os.path.basename(str(path)) == name and finishing:
            raise Killed
        return real(path, write)
    real_finish = sink.RunDirSink.finish

    def finish(self, *a, **k):
        finishing.append(1)
        return real_finish(self, *a, **k)
    with monkeypatch.context() as m:
        for mod in ("grokfast.store.result", "grokfast.engine.sink", "grokfast.store.history"):
            m.setattr(f"{mod}.atomic_write", fake)
        m.setattr(sink.RunDirSink, "finish", finish)
        with pytest.raises(Killed):
            run(d)
    finish_and_compare(d, ref)


def test_killed_in_the_middle_of_an_event_line(tmp_path, monkeypatch, ref):
    import grokfast.store.history as h
    d = tmp_path / "run"
    real, n = h.EventLog.emit, []

    def torn(self, event, *a, **k):
        n.append(1)
        if event == "checkpoint" and len(n) > 3:
            self._f.write('{"event": "checkp')
            self._f.flush()
            raise Killed
        return real(self, event, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(h.EventLog, "emit", torn)
        with pytest.raises(Killed):
            run(d)
    finish_and_compare(d, ref)


_CLI = """
    import sys, time
    import grokfast
    from grokfast import cli
    append = grokfast.engine.sink.RunDirSink.append
    def slow(self, *a):
        time.sleep(0.02)
        return append(self, *a)
    grokfast.engine.sink.RunDirSink.append = slow
    sys.exit(cli.main(["train", "--preset", "paper-real", "--set", "steps=300", "--set",
                       "log_every=10", "--set", "eval_every=20", "--backend", "torch",
                       "--checkpoint-every", "100", "--quiet", "--out", {d!r}]))
"""


@pytest.mark.parametrize("after", [1, 2])
def test_real_sigkill_after_a_checkpoint(tmp_path, ref, after):
    from grokfast.store.history import read_events
    d = tmp_path / "run"
    p = child(_CLI.format(d=str(d)), tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if sum(e["event"] == "checkpoint" for e in read_events(d)) >= after:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    finish_and_compare(d, ref)


def test_first_checkpoint_comes_early_by_default(tmp_path, monkeypatch):
    """No checkpoint option: the first checkpoint after FIRST_CHECKPOINT_SECONDS (here ~0), the
    next ones every DEFAULT_CHECKPOINT_SECONDS (here: only the last, at the end)."""
    from grokfast.store.history import read_events
    monkeypatch.setattr("grokfast.engine.loop.FIRST_CHECKPOINT_SECONDS", 1e-9)
    d = tmp_path / "run"
    grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK)
    steps = [e["step"] for e in read_events(d) if e["event"] == "checkpoint"]
    assert steps == [CHUNK, TINY.steps], steps
