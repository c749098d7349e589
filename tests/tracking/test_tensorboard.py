"""`--tensorboard`: the event files read back with TensorBoard's own reader and server equal the run.

Every statistic of every model must equal its history (rounded to float32, the format's scalar
type) at the same steps, bitwise, with no point missing or repeated — for one run, a multi-seed
launch, a run killed past its checkpoint and resumed, and a sweep (whose HParams must equal
results.csv); and export must write the same bytes as the live run.
"""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from grokfast.theory.probe import AlignmentProbe
from grokfast.sweeps.export import export_tensorboard

import grokfast
from grokfast.cli import main
from grokfast.errors import GrokfastError
from grokfast.tracking import Logger
from grokfast.tracking.tensorboard import (
    EVENT_FILE,
    METRICS,
    TAGS,
    TensorBoardLogger,
    row_run_name,
)

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

# paper-real, short: memorizes at ~120 steps; seeds 0–2 reach test accuracy 1/7 (the threshold
# here) within 600 steps, seed 3 does not.
CFG = grokfast.Config.preset("paper-real").replace(steps=600, log_every=10, eval_every=10,
                                                    grok_threshold=0.1)


def load(run_dir: Path):
    ea = event_accumulator.EventAccumulator(str(run_dir), size_guidance={
        "scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    return ea


def series(ea, tag):
    events = ea.Scalars(tag)
    return (np.array([e.step for e in events], dtype=np.int64),
            np.array([e.value for e in events], dtype=np.float32))


def assert_history_equal(ea, result):
    """Every statistic equals the history, float32, at the same steps; milestones and config."""
    h = result.history
    assert set(TAGS.values()) <= set(ea.Tags()["scalars"])
    for name, tag in TAGS.items():
        values = np.asarray(h[name])
        keep = np.isfinite(values.astype(np.float32))
        steps, got = series(ea, tag)
        np.testing.assert_array_equal(steps, np.asarray(h["step"])[keep].astype(np.int64),
                                      err_msg=f"{tag}: steps")
        assert np.array_equal(got.view(np.uint32), values[keep].astype(np.float32).view(np.uint32)), \
            f"{tag}: values differ from the history"
    for name in ("memorization_step", "grok_step"):
        want = getattr(result, name)
        tag = f"milestone/{name}"
        if want is None:
            assert tag not in ea.Tags()["scalars"]
        else:
            assert [(e.step, e.value) for e in ea.Scalars(tag)] == [(want, float(want))]
    text = ea.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert f"| seed | {result.config.seed} |" in text and "| width | 128 |" in text


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_export_equal(directory: Path):
    """`grokfast export tensorboard DIR` rewrites DIR/tensorboard/ byte for byte."""
    live = snapshot(directory / "tensorboard")
    shutil.rmtree(directory / "tensorboard")
    assert main(["export", "tensorboard", str(directory)]) == 0
    assert snapshot(directory / "tensorboard") == live


def test_single_run_with_probe_and_curves(tmp_path):
    d = tmp_path / "run"
    probe = AlignmentProbe(CFG, every=200, lag=10, gd_steps=20)
    r = grokfast.train(CFG, out=d, tensorboard=True, observers=[probe], chunk_steps=50)
    assert r.memorization_step is not None and r.grok_step is not None
    ea = load(d / "tensorboard")
    assert_history_equal(ea, r)
    for name in ("cos", "dist", "residual", "sigma_min"):
        steps, got = series(ea, f"probe/{name}")
        np.testing.assert_array_equal(steps, [200, 400, 600])
        assert np.array_equal(got, r.extras[f"probe_{name}"].astype(np.float32))
    (img,) = ea.Images("curves")
    assert img.step == 600 and img.encoded_image_string == (d / "curves.png").read_bytes()
    assert_export_equal(d)


def test_multi_seed_launch_and_cli(tmp_path, capsys):
    d = tmp_path / "batch"
    assert main(["train", "--set", "steps=600", "--set", "log_every=10", "--set", "eval_every=10",
                 "--set", "grok_threshold=0.1", "--seeds", "0:4", "--out", str(d), "--quiet",
                 "--tensorboard"]) == 0
    batch = grokfast.ResultBatch.load(d)
    assert [r.grok_step is None for r in batch] == [False, False, False, True]
    for i, r in enumerate(batch):
        assert_history_equal(load(d / "tensorboard" / f"model_{i:03d}"), r)
    assert_export_equal(d)


class _KillAfter(Logger):
    """Breaks into the run (as a second Ctrl-C does) once the history has passed `step`."""

    def __init__(self, step):
        self.step = step

    def on_chunk(self, rows, n_valid):
        if rows["step"].max() >= self.step:
            raise KeyboardInterrupt


def test_resume_after_a_kill_past_the_checkpoint(tmp_path):
    """Killed after TensorBoard got rows past the last checkpoint (step 300, killed at 450): the
    resume rewrites the file from the checkpoint, so no point appears twice or goes missing."""
    d = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        grokfast.train(CFG, out=d, checkpoint_every=300, chunk_steps=50,
                       loggers=[TensorBoardLogger(), _KillAfter(450)])
    steps, _ = series(load(d / "tensorboard"), "loss/train")
    assert steps.max() >= 450  # the killed run's file went past the checkpoint
    r = grokfast.train(None, resume=d, tensorboard=True)
    whole = grokfast.train(CFG, chunk_steps=50)
    assert np.array_equal(np.asarray(r.history["train_loss"]), whole.history["train_loss"])
    ea = load(d / "tensorboard")
    steps, _ = series(ea, "loss/train")
    np.testing.assert_array_equal(steps, np.arange(0, 600, 10))
    assert_history_equal(ea, r)
    assert_export_equal(d)


def test_resume_turns_tensorboard_on(tmp_path):
    """A run started without --tensorboard and resumed with it gets its whole history."""
    d = tmp_path / "run"
    grokfast.train(CFG, out=d, max_steps=300)
    assert not (d / "tensorboard").exists()
    r = grokfast.train(None, resume=d, tensorboard=True)
    assert_history_equal(load(d / "tensorboard"), r)
    assert_export_equal(d)


def test_sweep_hparams_equal_results_csv(tmp_path):
    d = tmp_path / "sweep"
    sw = grokfast.sweep(CFG, grid={"weight_decay": [1e-4, 3e-4]}, seeds=[0, 3], out=d,
                        tensorboard=True, figures=False)
    root = load(d / "tensorboard")
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        root.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert [h.name for h in exp.hparam_infos] == ["weight_decay", "seed"]
    assert [m.name.tag for m in exp.metric_infos] == [f"result/{m}" for m in METRICS]
    assert len(sw.table) == 4
    for i, row in enumerate(sw.table):
        ea = load(d / "tensorboard" / row_run_name({"weight_decay": row["weight_decay"]},
                                                   row["seed"]))
        assert_history_equal(ea, sw.result(i))
        content = ea.PluginTagToContent("hparams")
        ssi = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        assert ssi.hparams["weight_decay"].number_value == row["weight_decay"]
        assert ssi.hparams["seed"].number_value == row["seed"]
        for m in METRICS:
            tag = f"result/{m}"
            if row[m] is None:
                assert tag not in ea.Tags()["scalars"]
            else:
                (e,) = ea.Scalars(tag)
                assert e.step == row["steps_done"] and e.value == np.float32(float(row[m]))
    assert_export_equal(d)


def _get(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(req, timeout=5) as f:
        return json.load(f)


def test_tensorboard_server_serves_the_runs(tmp_path):
    """A real `tensorboard --logdir` on a free loopback port, on a sweep: its run list, one scalar
    series and the HParams experiment with one session group per row, over its HTTP API."""
    d = tmp_path / "sweep"
    sw = grokfast.sweep(CFG, grid={"weight_decay": [1e-4, 3e-4]}, seeds=[1], out=d,
                        tensorboard=True, figures=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("tensorboard")
    cmd = [str(exe) if exe.exists() else "tensorboard", "--logdir", str(d), "--port", str(port),
           "--host", "127.0.0.1", "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    run = "tensorboard/" + row_run_name({"weight_decay": 3e-4}, 1)
    want = sw.result(1).history
    query = urllib.parse.urlencode({"run": run, "tag": "loss/train"})
    try:
        deadline, runs, points = time.monotonic() + 90, [], []
        while time.monotonic() < deadline and len(points) != len(want["step"]):
            time.sleep(0.5)
            assert proc.poll() is None, "tensorboard exited"
            try:
                runs = _get(f"{base}/data/runs")
                if run in runs:
                    points = _get(f"{base}/data/plugin/scalars/scalars?{query}")
            except OSError:
                continue
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = _get(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [{"hparam": "weight_decay"}, {"hparam": "seed"}]
            + [{"metric": {"tag": f"result/{m}"}} for m in METRICS]})
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert sorted(runs) == sorted(["tensorboard", run, "tensorboard/" + row_run_name(
        {"weight_decay": 1e-4}, 1)])
    assert [p[1] for p in points] == [int(s) for s in want["step"]]
    assert np.array_equal(np.array([p[2] for p in points], np.float32),
                          np.asarray(want["train_loss"], np.float32))
    assert sorted(h["name"] for h in experiment["hparamInfos"]) == ["seed", "weight_decay"]
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [f"result/{m}" for m in METRICS]
    assert len(groups["sessionGroups"]) == 2
    for g in groups["sessionGroups"]:
        row = next(r for r in sw.table if r["weight_decay"] == g["hparams"]["weight_decay"])
        (session,) = g["sessions"]
        metrics = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
        assert metrics["result/steps_done"] == row["steps_done"]
        assert np.float32(metrics["result/final_test_loss"]) == np.float32(row["final_test_loss"])


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(GrokfastError, match="pass out=DIR"):
        grokfast.train(CFG, tensorboard=True)
    with pytest.raises(GrokfastError, match="not a logger"):
        grokfast.train(CFG, out=tmp_path / "a", loggers=[object()])
    with pytest.raises(GrokfastError, match="neither a run directory"):
        export_tensorboard(tmp_path)
    import grokfast.tracking.event_file as ev
    monkeypatch.setattr(ev, "_pb", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorboardX.crc32c", None)
    with pytest.raises(GrokfastError, match=r'pip install "grokfast\[tensorboard\]"'):
        grokfast.train(CFG, out=tmp_path / "b", tensorboard=True)
    assert not (tmp_path / "b").exists()
    assert EVENT_FILE.startswith("events.out.tfevents")
