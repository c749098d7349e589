"""Red team, corrupt and missing files of each kind: `show`, `--resume` and `Result.load` give one
clear error naming the file (never a traceback), or recover from the last verified state; an old
run directory without checksums still loads and resumes."""
import json

import pytest
from bitwise import assert_bitwise
from redteam_helpers import CHUNK, TINY, assert_clean_error, run_cli

import grokfast
from grokfast import GrokfastError, Result, SweepResult
from grokfast.store.checkpoint import load_checkpoint, save_checkpoint
from grokfast.store.history import chunk_files



def stopped(d, at=200):
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100,
                          max_steps=at)


def whole(d):
    return grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100)


def same(a: Result, b: Result):
    assert_bitwise(dict(a.history), dict(b.history), "history")
    assert_bitwise(a.params, b.params, "params")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import grokfast.store.result as r
    plot, r.plot_curves = r.plot_curves, lambda result, path: None
    d = tmp_path_factory.mktemp("fin") / "run"
    whole(d)
    r.plot_curves = plot
    return d


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst, symlinks=True)
    (dst / "run.lock").unlink(missing_ok=True)
    return dst


GARBAGE = {"garbled": b"{not json", "binary": b"\xff\xfe\x00garbage\x80", "empty": b"",
           "list": b"[1, 2]"}


@pytest.mark.parametrize("kind", list(GARBAGE))
@pytest.mark.parametrize("name", ["run.json", "result.json", "config.json"])
def test_damaged_json_of_a_run(tmp_path, capsys, finished, name, kind):
    d = copy_run(finished, tmp_path / "run")
    (d / name).write_bytes(GARBAGE[kind])
    code, out, err = run_cli(capsys, "show", d)
    assert_clean_error(code, err, name)
    with pytest.raises(GrokfastError, match=name):
        Result.load(d)


@pytest.mark.parametrize("name", ["params.npz", "history.npz"])
@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "old-format"])
def test_damaged_npz_of_a_saved_result(tmp_path, capsys, name, checksums):
    d = tmp_path / "saved"
    grokfast.train(TINY.replace(steps=40), backend="torch").save(d, curves=False)
    if not checksums:  # as written before checksums existed
        meta = json.loads((d / "result.json").read_text())
        del meta["checksums"]
        (d / "result.json").write_text(json.dumps(meta))
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
    (d / name).write_bytes(bytes(data))
    with pytest.raises(GrokfastError, match=name):
        Result.load(d)
    code, out, err = run_cli(capsys, "show", d)
    assert_clean_error(code, err, name)


def test_events_log_not_utf8_is_read_around(tmp_path, capsys, finished):
    d = copy_run(finished, tmp_path / "run")
    with open(d / "events.jsonl", "ab") as f:
        f.write(b"\xff\xfe torn line\n{\"event\": 3}\n")
    code, out, err = run_cli(capsys, "show", d)
    assert code == 0 and "status finished; last event: finished" in out, err


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sw") / "sweep"
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5, 1.0]}, out=d, figures=False)
    return d


@pytest.mark.parametrize("kind", ["garbled", "binary"])
@pytest.mark.parametrize("name", ["plan.json", "status.json", "results.csv"])
def test_damaged_sweep_files(tmp_path, capsys, swept, name, kind):
    d = copy_run(swept, tmp_path / "sweep")
    (d / "sweep.lock").unlink(missing_ok=True)
    (d / name).write_bytes(GARBAGE[kind] + (b"\n1,2,3,4\n" if name == "results.csv" else b""))
    code, out, err = run_cli(capsys, "show", d)
    assert_clean_error(code, err, name)
    if name != "plan.json":  # the launches are intact: resume rewrites the table and status
        code, out, err = run_cli(capsys, "sweep", "--resume", d, "--quiet")
        assert code == 0, err
        assert [r["lr"] for r in SweepResult.load(d).table] == [0.5, 1.0]


def test_truncated_checkpoint_without_previous_is_refused(tmp_path, capsys):
    d = tmp_path / "run"
    grokfast.train(TINY, out=d, backend="torch", chunk_steps=CHUNK, checkpoint_every=100,
                   max_steps=100)
    assert not (d / "checkpoint.prev.pt").exists()
    (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:100])
    code, out, err = run_cli(capsys, "train", "--resume", d, "--quiet")
    assert_clean_error(code, err, "checkpoint.pt", "truncated")


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_damaged_checkpoint_resumes_from_previous(tmp_path, damage):
    ref = whole(tmp_path / "ref")
    d = tmp_path / "run"
    stopped(d)
    data = bytearray((d / "checkpoint.pt").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0x55
    (d / "checkpoint.pt").write_bytes(bytes(data))
    grokfast.train(None, resume=d)
    same(Result.load(d), ref)


def test_missing_chunk_is_refused_by_name(tmp_path):
    d = tmp_path / "run"
    stopped(d)
    gone = chunk_files(d)[0][2]
    gone.unlink()
    with pytest.raises(GrokfastError, match=gone.name):
        grokfast.train(None, resume=d)


def test_old_run_dir_without_checksums_loads_and_resumes(tmp_path):
    """A run directory from before the checksums: no "chunks" in the checkpoint or run.json, no
    "checksums" in result.json. It resumes (bitwise) and loads, with the structural checks only."""
    ref = whole(tmp_path / "ref")
    d = tmp_path / "run"
    stopped(d)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        state = load_checkpoint(d, name)
        state.pop("chunks")
        state.pop("format")
        (d / "checkpoint.pt").unlink() if name == "checkpoint.pt" else None
        save_checkpoint(d, state) if name == "checkpoint.pt" else None
    run = json.loads((d / "run.json").read_text())
    run.pop("chunks")
    (d / "run.json").write_text(json.dumps(run))
    grokfast.train(None, resume=d)
    same(Result.load(d), ref)


def test_stale_running_status_reads_interrupted(tmp_path, capsys, monkeypatch):
    d = tmp_path / "run"

    class Killed(BaseException):
        pass

    def killed(*a, **k):
        raise Killed
    real = grokfast.engine.sink.RunDirSink.checkpoint
    calls = []

    def second_kills(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k) if len(calls) == 1 else killed()
    monkeypatch.setattr("grokfast.engine.sink.RunDirSink.checkpoint", second_kills)
    with pytest.raises(Killed):
        whole(d)
    monkeypatch.undo()
    assert json.loads((d / "run.json").read_text())["status"] == "running"
    code, out, err = run_cli(capsys, "show", d)
    assert code == 0 and "status interrupted" in out and "status running" not in out, out
    assert "status interrupted" in Result.load(d).stop_reason


def test_stale_running_sweep_status_reads_interrupted(tmp_path, swept):
    d = copy_run(swept, tmp_path / "sweep")
    status = json.loads((d / "status.json").read_text())
    status["status"] = "running"
    (d / "status.json").write_text(json.dumps(status))
    assert SweepResult.load(d).status["status"] == "interrupted"


def test_overlapping_chunk_is_named_with_a_true_range(tmp_path):
    import shutil
    d = tmp_path / "run"
    stopped(d)
    (r0, r1, p), (s0, s1, q) = chunk_files(d)[:2]
    bad = p.with_name(f"chunk_{r0 + 5:012d}_{s1:012d}.npz")
    shutil.copy(q, bad)
    with pytest.raises(GrokfastError, match=f"overlaps rows {r0 + 5}–{r1 - 1}"):
        Result.load(d).history["step"]
