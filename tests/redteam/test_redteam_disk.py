"""Red team, full disk (a simulated ENOSPC from os.fsync once the disk "fills"): one clear error
saying to free space and resume, a truthful status, and a resume that finishes bitwise."""
import errno
import json
import os

import pytest
from bitwise import assert_bitwise
from redteam_helpers import CHUNK, TINY, assert_clean_error, run_cli

import grokfast
from grokfast import GrokfastError, Result, SweepResult
from grokfast.engine import sink as sink_mod



@pytest.fixture
def disk(monkeypatch):
    """disk.full = True: every later fsync (so every atomic write) fails with ENOSPC."""
    class Disk:
        full = False
    real = os.fsync

    def fsync(fd):
        if Disk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return Disk


def fill_at(monkeypatch, disk, method, nth):
    real, calls = getattr(sink_mod.RunDirSink, method), []

    def wrapped(self, *a, **k):
        calls.append(1)
        if len(calls) == nth:
            disk.full = True
        return real(self, *a, **k)
    monkeypatch.setattr(sink_mod.RunDirSink, method, wrapped)


def run(d, **kw):
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100,
                          **kw)


@pytest.mark.parametrize("method, nth", [("append", 3), ("checkpoint", 2), ("checkpoint", 3),
                                         ("finish", 1)],
                         ids=["chunk-after-1st-checkpoint", "2nd-checkpoint", "3rd-checkpoint",
                              "saving-result"])
def test_disk_full_stops_cleanly_and_resumes_bitwise(tmp_path, monkeypatch, disk, method, nth):
    ref = run(tmp_path / "ref")
    d = tmp_path / "run"
    with monkeypatch.context() as m:
        fill_at(m, disk, method, nth)
        with pytest.raises(GrokfastError, match="no space left.*--resume"):
            run(d)
    disk.full = False  # space freed
    got = Result.load(d)
    assert got.interrupted and "status interrupted" in got.stop_reason
    grokfast.train(None, resume=d)
    got = Result.load(d)
    assert_bitwise(dict(got.history), dict(ref.history), "history")
    assert_bitwise(got.params, ref.params, "params")


def test_disk_full_cli_one_error_line(tmp_path, capsys, monkeypatch, disk):
    fill_at(monkeypatch, disk, "checkpoint", 2)
    code, out, err = run_cli(capsys, "train", "--preset", "paper-real", "--set", "steps=300",
                             "--backend", "torch", "--checkpoint-every", "100", "--quiet",
                             "--out", tmp_path / "run")
    assert_clean_error(code, err, "no space left", "--resume")


def test_disk_full_in_a_sweep(tmp_path, capsys, monkeypatch, disk):
    grid = ["--grid", "lr=0.5,1", "--max-models-per-launch", "1"]
    args = ["sweep", "--preset", "paper-real", "--set", "steps=200", "--backend", "torch",
            "--quiet", *grid]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "ref")
    assert code == 0, err
    d = tmp_path / "sweep"
    fill_at(monkeypatch, disk, "finish", 2)  # while the second launch saves its results
    code, _, err = run_cli(capsys, *args, "--out", d)
    assert_clean_error(code, err, "no space left")
    disk.full = False
    monkeypatch.undo()
    assert SweepResult.load(d).status["status"] == "interrupted"
    code, _, err = run_cli(capsys, "sweep", "--resume", d, "--quiet")
    assert code == 0, err
    drop = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa
    assert drop(SweepResult.load(d).table) == drop(SweepResult.load(tmp_path / "ref").table)


def test_disk_full_from_the_start(tmp_path, capsys, disk):
    disk.full = True
    code, _, err = run_cli(capsys, "train", "--set", "steps=50", "--backend", "torch", "--quiet",
                           "--out", tmp_path / "run")
    assert_clean_error(code, err, "no space left")
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"] \
        if (tmp_path / "run" / "run.json").exists() else None
    assert status in (None, "running")  # a stale "running" reads as interrupted
    if status:
        assert "status interrupted" in Result.load(tmp_path / "run").stop_reason
