"""Red team, reading back what a run wrote and what a user passes: damaged checksum tables and
history chunks are named, numpy scalars are the numbers they hold, an impossible size is refused
before anything is allocated, and a running sweep is not told to resume."""
import json

import pytest
from redteam_helpers import (
    TINY,
    assert_clean_error,
    child,
    finished_run,
    finished_sweep,
    run_cli,
)

import grokfast
from grokfast import GrokfastError


@pytest.mark.parametrize("checksums", ["garbage", ["params.npz"], {"../x": "0" * 64},
                                       {"params.npz": 5}])
def test_result_json_with_damaged_checksums(tmp_path, capsys, checksums):
    """Defect 5: `"checksums": "garbage"` raised AttributeError in show and Result.load."""
    d = finished_run(tmp_path / "run")
    meta = json.loads((d / "result.json").read_text())
    meta["checksums"] = checksums
    (d / "result.json").write_text(json.dumps(meta))
    with pytest.raises(GrokfastError, match="result.json"):
        grokfast.Result.load(d)
    code, out, err = run_cli(capsys, "show", d)
    assert_clean_error(code, err, "result.json")


# ---------------------------------------------------------------- show, inputs
def test_show_names_a_damaged_history_chunk(tmp_path, capsys):
    """Defect 9: show printed a summary (exit 0) over a damaged chunk; the API refused it."""
    d = tmp_path / "run"
    grokfast.train(TINY, out=d, backend="torch", chunk_steps=50, checkpoint_every=100,
                   max_steps=200)
    chunk = sorted((d / "history").iterdir())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "show", d)
    assert_clean_error(code, err, chunk.name)


@pytest.mark.parametrize("changes,field,value", [
    (dict(lr=__import__("numpy").float32(0.5)), "lr", 0.5),
    (dict(width=__import__("numpy").int64(64)), "width", 64),
    (dict(weight_decay=__import__("numpy").float16(0.25)), "weight_decay", 0.25),
    (dict(steps=__import__("numpy").uint32(7)), "steps", 7)], ids=["f32", "i64", "f16", "u32"])
def test_numpy_scalars_are_the_numbers_they_hold(changes, field, value):
    """Defect 12: np.float32 lr "must be a finite number", np.int64 width "must be an integer"."""
    c = TINY.replace(**changes)
    assert getattr(c, field) == value and type(getattr(c, field)) is type(value)
    assert grokfast.Config.from_json(c.to_json()) == c


def test_numpy_scalars_keep_the_rules_of_python_numbers():
    import numpy as np
    for changes in (dict(width=np.float64(64.0)), dict(width=64.0), dict(lr=np.bool_(True)),
                    dict(lr=np.float32("nan"))):
        with pytest.raises(GrokfastError):
            TINY.replace(**changes)


def test_show_of_a_running_sweep_does_not_advise_resume(tmp_path, capsys):
    """Defect 14: show on a running sweep ended "continue it with `grokfast sweep --resume`",
    which would be refused while it runs."""
    d = finished_sweep(tmp_path / "sweep")
    status = json.loads((d / "status.json").read_text())
    (d / "status.json").write_text(json.dumps({**status, "status": "running"}))
    p = child(f"""
        import time
        from grokfast.store.ownership import SWEEP_LOCK, DirLock
        with DirLock({str(d)!r}, SWEEP_LOCK, what="sweep"):
            print("held", flush=True)
            time.sleep(120)
    """, cwd=tmp_path)
    try:
        assert p.stdout.readline().strip() == "held"
        code, out, err = run_cli(capsys, "show", d)
        assert code == 0, err
        assert "still running" in out and "continue it with" not in out
    finally:
        p.kill()
        p.wait()


def test_an_impossible_size_is_refused_before_allocating(capsys):
    """Defect 13: --set p=100003 planned 5·10⁹ pairs and allocated until it failed, then advised
    lowering width or seeds."""
    import resource
    code, out, err = run_cli(capsys, "train", "--preset", "paper-real", "--set", "p=100003",
                             "--set", "steps=1", "--backend", "torch", "--quiet")
    assert_clean_error(code, err, "p=100003", "lower p")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 * 2 ** 20  # KiB: < 8 GiB


def test_memory_estimate_passes_the_presets():
    from grokfast.data import check_memory
    for name in ("paper-real", "paper-sim", "gromov"):
        check_memory(grokfast.Config.preset(name), available=2 ** 30)
    with pytest.raises(GrokfastError, match="lower width"):
        check_memory(grokfast.Config.preset("paper-real", width=10 ** 7), available=2 ** 30)
