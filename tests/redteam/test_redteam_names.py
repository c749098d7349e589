"""Red team, hostile names and symlinks: a run writes only inside its directory, only names it
made, never through a link; a directory it does not own is refused, saying what to do."""
import errno
import json
import os

import pytest
from redteam_helpers import (
    CHUNK,
    TINY,
    assert_clean_error,
    run_cli,
    snapshot,
    tiny_args,
)

import grokfast
from grokfast import GrokfastError, Result, ResultBatch, SweepResult



def stopped(d, seeds=None):
    return grokfast.train(TINY, seeds=seeds, out=d, backend="torch", chunk_steps=CHUNK,
                          checkpoint_every=100, max_steps=200)


@pytest.fixture
def world(tmp_path):
    """A run directory deep inside tmp_path, a precious file beside it, and a snapshot check."""
    d = tmp_path / "a" / "b" / "run"
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")

    def unchanged(before):
        assert precious.read_text() == "precious\n"
        assert snapshot(tmp_path, skip=d) == before
    return d, precious, unchanged


@pytest.mark.parametrize("names", [["../x"], ["/ABS"], ["model_000/../../x"], [""], [5],
                                   ["model_000", "model_000"], "model_000", ["models"]],
                         ids=["dotdot", "absolute", "nested", "empty", "number", "duplicate",
                              "string", "other"])
def test_hostile_model_names_in_run_json(world, names):
    d, precious, unchanged = world
    stopped(d, seeds=[0, 1])
    run = json.loads((d / "run.json").read_text())
    run["models"] = [str(precious.parent / "abs") if n == "/ABS" else n for n in names] \
        if isinstance(names, list) else names
    (d / "run.json").write_text(json.dumps(run))
    before = snapshot(d.parents[2], skip=d)
    with pytest.raises(GrokfastError, match="run.json"):
        grokfast.train(None, resume=d)
    with pytest.raises(GrokfastError, match="run.json"):
        ResultBatch.load(d)
    unchanged(before)


def test_hostile_launch_name_in_plan_json(tmp_path, capsys):
    d = tmp_path / "sweep"
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5]}, out=d, figures=False,
                   max_time=1e-9)
    plan = json.loads((d / "plan.json").read_text())
    plan["launches"][0]["name"] = "../../escape"
    (d / "plan.json").write_text(json.dumps(plan))
    before = snapshot(tmp_path, skip=d)
    code, out, err = run_cli(capsys, "sweep", "--resume", d, "--quiet")
    assert_clean_error(code, err, "plan.json", "escape")
    with pytest.raises(GrokfastError, match="plan.json"):
        SweepResult.load(d)
    assert snapshot(tmp_path, skip=d) == before


def test_hostile_history_reference_in_result_json(tmp_path):
    d = tmp_path / "run"
    grokfast.train(TINY.replace(steps=50), out=d, backend="torch")
    meta = json.loads((d / "result.json").read_text())
    meta["history"] = {"launch": "../..", "index": 0}
    (d / "result.json").write_text(json.dumps(meta))
    with pytest.raises(GrokfastError, match="result.json"):
        Result.load(d)


@pytest.mark.parametrize("name", ["model_000", "history"])
def test_symlinked_directory_inside_a_run_is_refused(world, name):
    d, precious, unchanged = world
    stopped(d, seeds=[0, 1])
    elsewhere = precious.parent / "elsewhere"
    os.rename(d / name, elsewhere)
    (d / name).symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(precious.parent, skip=d)
    with pytest.raises(GrokfastError, match="symbolic link"):
        grokfast.train(None, resume=d)
    unchanged(before)


@pytest.mark.parametrize("name", ["run.lock", "events.jsonl"])
def test_symlinked_file_grokfast_appends_or_locks_is_refused(world, name):
    d, precious, unchanged = world
    stopped(d)
    (d / name).unlink(missing_ok=True)
    (d / name).symlink_to(precious)
    before = snapshot(precious.parent, skip=d)
    with pytest.raises(GrokfastError, match="symbolic link"):
        grokfast.train(None, resume=d)
    unchanged(before)


@pytest.mark.parametrize("name", ["config.json", "run.json", "result.json", ".config.json.1.tmp"])
def test_symlinked_file_grokfast_replaces_is_replaced_not_followed(world, name):
    d, precious, unchanged = world
    stopped(d)
    (d / name).unlink(missing_ok=True)
    if name == "run.json":  # keep its content readable through the link: a copy elsewhere
        other = precious.parent / "run-copy.json"
        grokfast.train(TINY.replace(steps=10), out=precious.parent / "scratch", backend="torch")
        run = json.loads((precious.parent / "scratch" / "run.json").read_text())
        run.update(steps=TINY.steps, status="interrupted")
        other.write_text(json.dumps(run))
        (d / name).symlink_to(other)
        before = snapshot(precious.parent, skip=d)
    else:
        (d / name).symlink_to(precious)
        before = snapshot(precious.parent, skip=d)
    grokfast.train(None, resume=d)
    assert not (d / name).is_symlink()
    unchanged(before)


def test_sweep_files_symlinked_are_replaced_not_followed(tmp_path):
    d = tmp_path / "sweep"
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5, 1.0]}, out=d, figures=False,
                   max_models_per_launch=1, max_time=1e-9)
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    for name in ("status.json", "results.csv"):
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(precious)
    grokfast.sweep(out=d, resume=True, figures=False)
    assert precious.read_text() == "precious\n"
    assert not (d / "results.csv").is_symlink() and len(SweepResult.load(d).table) == 2


@pytest.mark.parametrize("setup, words", [
    (lambda p: p.write_text("a file"), "is a file"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "did not write"),
    (lambda p: (p.mkdir(), (p / "result.json").write_text("{}")), "already holds a run"),
    (lambda p: (p.mkdir(), (p / "model_000").mkdir()), "already holds a run"),
    (lambda p: (p.mkdir(), (p / "plan.json").write_text("{}")), "already holds a sweep"),
], ids=["file", "foreign", "result", "model-dir", "sweep"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_out_not_owned_is_refused_untouched(tmp_path, capsys, setup, words, command):
    out = tmp_path / "out"
    setup(out)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, command, *tiny_args(), "--out", out)
    assert_clean_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "train", *tiny_args(), "--out", tmp_path / "f" / "run")
    assert_clean_error(code, err, "not a directory")


def test_read_only_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    real = os.mkdir

    def read_only(path, *a, **k):
        if "ro" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", read_only)
    for command in ("train", "sweep"):
        code, _, err = run_cli(capsys, command, *tiny_args(), "--out", tmp_path / "ro" / "x")
        assert_clean_error(code, err, "read-only", "writable")


def test_resume_of_a_missing_directory_creates_nothing(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "nope", "--quiet")
    assert_clean_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "sweep", "--resume", tmp_path / "nope2", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == []


def test_start_over_in_place_never_removes_foreign_files(tmp_path, monkeypatch):
    """A run killed before its first checkpoint starts over with --resume; a file that is not
    grokfast's inside its model directory stops that, untouched."""
    class Killed(BaseException):
        pass

    def killed(*a, **k):
        raise Killed
    d = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("grokfast.engine.sink.RunDirSink.checkpoint", killed)
        with pytest.raises(Killed):
            grokfast.train(TINY, seeds=[0, 1], out=d, backend="torch")
    (d / "model_001" / "notes.txt").write_text("mine")
    with pytest.raises(GrokfastError, match="notes.txt was not written by grokfast"):
        grokfast.train(None, resume=d)
    assert (d / "model_001" / "notes.txt").read_text() == "mine"
    (d / "model_001" / "notes.txt").unlink()
    assert len(grokfast.train(None, resume=d)) == 2
