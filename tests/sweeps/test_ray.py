"""The Ray executor (grokfast.sweeps.ray) on local Ray instances: tables and parameters bitwise
equal to a local sweep, a worker SIGKILLed mid-launch (retried, resumed from its checkpoint), the
driver SIGKILLed (`--resume --ray local` runs only what is missing), launches placed one per
declared GPU without GPUs, errors recorded per launch, and the boundary errors.

Ray is an optional extra: without it only the tests of the missing-Ray error run (.ci/run installs
"grokfast[ray]" and sets GROKFAST_REQUIRE_RAY, where a missing Ray fails instead of skipping).
"""
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Local Ray instances of these tests listen on the loopback address only (read when ray is
# imported; workers inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from bitwise import assert_bitwise  # noqa: E402
from sweep_cases import GRID, SEEDS, TINY, table_without  # noqa: E402

import grokfast  # noqa: E402
from grokfast import Config, GrokfastError, SweepResult, cli  # noqa: E402
from grokfast.store.history import read_events  # noqa: E402
from grokfast.sweeps import SweepOptions, plan  # noqa: E402
from grokfast.sweeps.ray import RECORD_DIR, RayExecutor, read_record  # noqa: E402

try:
    import ray
except ImportError:
    ray = None
    if os.environ.get("GROKFAST_REQUIRE_RAY"):
        raise RuntimeError('CI runs the Ray tests: install the extra, pip install -e ".[ray]"')
needs_ray = pytest.mark.skipif(ray is None, reason='needs Ray: pip install "grokfast[ray]"')

# paper-real at p = 11, 2 models per launch: about 19 000 steps/s per launch on one core here with
# the native chunk loop (statistics included), so a launch of LONG takes a few seconds: long enough
# to kill mid-way after a checkpoint (at 8000 steps the last launch could finish between the check
# and the kill).
LONG = Config.preset("paper-real").replace(steps=60_000)
LONG_GRID = {"weight_decay": [1e-4, 2e-4, 4e-4]}  # with 2 models per launch: 3 launches
LONG_SETS = ["steps=60000"]


def same_sweeps(got: SweepResult, want: SweepResult) -> None:
    """Row for row equal tables but wall_time, and every model's history and parameters bitwise."""
    assert got.complete and want.complete
    assert table_without(got.table, "wall_time") == table_without(want.table, "wall_time")
    for i in range(len(want.table)):
        a, b = got.result(i), want.result(i)
        assert_bitwise(a.params, b.params, f"row {i} params")
        for k in grokfast.STAT_NAMES:
            assert_bitwise(np.asarray(a.history[k]), np.asarray(b.history[k]), f"row {i} {k}")


@pytest.fixture(scope="module")
def long_local(tmp_path_factory):
    """The LONG sweep (3 launches) through the local executor, uninterrupted."""
    return grokfast.sweep(LONG, grid=LONG_GRID, seeds=[0, 1], max_models_per_launch=2,
                          out=tmp_path_factory.mktemp("long") / "local", backend="torch",
                          figures=False)


def attempts(sweep_dir, launch: str, event: str = "started") -> list:
    return [r for r in read_record(sweep_dir) if r["launch"] == launch and r["event"] == event]


def checkpointed(launch_dir) -> bool:
    return any(e["event"] == "checkpoint" and e["step"] > 0 for e in read_events(launch_dir))


def kill_worker_when_checkpointed(sweep_dir, launch: str, timeout: float = 120) -> threading.Thread:
    """A thread that SIGKILLs the Ray worker running `launch` (its pid from the attempt record)
    once the launch has written a checkpoint; its `.killed` holds the pid."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = attempts(sweep_dir, launch) if (sweep_dir / RECORD_DIR).is_dir() else []
            if started and checkpointed(sweep_dir / launch):
                os.kill(started[0]["pid"], signal.SIGKILL)
                thread.killed = started[0]["pid"]
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = None
    thread.start()
    return thread


# ------------------------------------------------------------------------ without Ray
def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(GrokfastError, match=r'pip install "grokfast\[ray\]"'):
        RayExecutor("local")
    with pytest.raises(GrokfastError, match=r'pip install "grokfast\[ray\]"'):
        grokfast.sweep(TINY, grid={"lr": [1e-2]}, out=tmp_path / "api", executor="ray",
                       figures=False)
    code = cli.main(["sweep", "--set", "steps=10", "--grid", "lr=0.5", "--out",
                     str(tmp_path / "cli"), "--quiet", "--ray", "local"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "grokfast[ray]"' in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("kwargs, words", [
    (dict(cpus_per_launch=0), "cpus_per_launch=0 must be a positive integer"),
    (dict(cpus_per_launch=1.5), "cpus_per_launch=1.5 must be a positive integer"),
    (dict(gpus_per_launch=2), "gpus_per_launch=2 must be 1, or a fraction"),
    (dict(gpus_per_launch=0), "gpus_per_launch=0 must be 1"),
    (dict(address=""), "use 'local', 'auto', HOST:PORT"),
    (dict(max_retries=-1), "max_retries=-1"),
    (dict(address="auto", init_options={"num_cpus": 2}), "init_options start a local"),
], ids=["cpus0", "cpus-frac", "gpus-2", "gpus-0", "address-empty", "retries", "init-auto"])
def test_bad_arguments_are_refused_before_ray_is_imported(kwargs, words, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(GrokfastError, match=words):
        RayExecutor(**kwargs)


# ------------------------------------------------------------------------ driver killed (CLI)
def _cli_sweep(*args):
    """`grokfast sweep ... --ray local` in its own session (a process group to clean up)."""
    return subprocess.Popen([sys.executable, "-m", "grokfast", "sweep", *args, "--quiet",
                             "--ray", "local"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _end_group(proc) -> None:
    """SIGKILL what is left of the killed driver's process group (Ray's agents outlive it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@needs_ray
def test_driver_killed_then_resume_runs_only_what_is_missing(tmp_path, long_local):
    out = tmp_path / "killed"
    sets = [a for s in LONG_SETS for a in ("--set", s)]
    proc = _cli_sweep(*sets, "--grid", "weight_decay=1e-4,2e-4,4e-4", "--seeds", "0:2",
                      "--max-models-per-launch", "2", "--backend", "torch", "--checkpoint-every", "500",
                      "--out", str(out))
    try:
        deadline = time.monotonic() + 240
        names = {"launch_000", "launch_001", "launch_002"}
        while True:  # 2 CPUs: two launches run together, then the third (which one is Ray's
            # choice: it does not promise submission order); kill once the third checkpointed
            rows = SweepResult.load(out).table if (out / "results.csv").is_file() else []
            done = {r["launch"] for r in rows}
            if len(rows) == 4 and checkpointed(out / (last := (names - done).pop())):
                assert not attempts(out, last, "finished"), "the last launch ended before the kill"
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the third launch wrote no checkpoint in 240 s"
            time.sleep(0.005)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        _end_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert SweepResult.load(out).status["status"] == "interrupted"  # stale "running"
    assert not attempts(out, last, "finished")

    resumed = _cli_sweep("--resume", str(out))
    try:
        stdout, stderr = resumed.communicate(timeout=240)
    finally:
        _end_group(resumed)
    assert resumed.returncode == 0, (stdout, stderr)
    for name in names - {last}:  # finished before the kill: not run again
        assert len(attempts(out, name)) == 1 and len(attempts(out, name, "finished")) == 1
    assert len(attempts(out, last)) == 2  # killed, then resumed from its checkpoint
    assert [e["event"] for e in read_events(out / last)].count("resumed") == 1
    same_sweeps(SweepResult.load(out), long_local)


@needs_ray
def test_ray_address_auto_without_a_cluster_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    launches = plan(TINY, {}, [0])
    with pytest.raises(GrokfastError, match="ray start --head"):
        RayExecutor("auto").run(launches, tmp_path, SweepOptions(), lambda launch, rows: None)


@needs_ray
def test_a_launch_no_local_node_can_run_is_refused_before_it_waits_forever(tmp_path):
    launches = plan(TINY, {}, [0])
    with pytest.raises(GrokfastError, match=r"needs 64 CPU and 0 GPU, more than any node of the "
                                            r"Ray cluster has \(2 CPU / 0 GPU\): lower --cpus"):
        RayExecutor("local", cpus_per_launch=64, init_options=dict(num_cpus=2)).run(
            launches, tmp_path, SweepOptions(), lambda launch, rows: None)
    assert not ray.is_initialized()  # the instance it started is stopped


@needs_ray
def test_a_sweep_joins_a_cluster_started_with_ray_start(tmp_path):
    # RAY_TMPDIR: this cluster's files, and the address file `--ray auto` reads, stay private
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live there
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--block"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not Path(ray_tmp, "ray", "ray_current_cluster").is_file():
            assert head.poll() is None and time.monotonic() < deadline, "ray start failed"
            time.sleep(0.1)
        out = tmp_path / "s"
        p = subprocess.run([sys.executable, "-m", "grokfast", "sweep", "--set", "steps=2000",
                            "--grid", "weight_decay=1e-4,2e-4", "--max-models-per-launch", "1",
                            "--backend", "torch", "--quiet", "--out", str(out), "--ray", "auto"],
                           env=env, capture_output=True, text=True, timeout=240)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert head.poll() is None  # the driver joined the cluster and left it running
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        finally:
            _end_group(head)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    got = SweepResult.load(out)
    assert got.complete and [r["error"] for r in got.table] == [None, None]
    assert [len(attempts(out, l.name, "finished")) for l in got.plan] == [1, 1]


# ------------------------------------------------------------------------ on one Ray instance
@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance declaring 4 CPUs and 4 GPUs (none real) on this 2-core machine; the
    sweeps below join it (ray_address=None, this process's connection)."""
    if ray is None:
        pytest.skip('needs Ray: pip install "grokfast[ray]"')
    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, object_store_memory=100 << 20,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_a_ray_sweep_equals_the_local_sweep_bitwise(cluster, tmp_path):
    kw = dict(grid=GRID, seeds=SEEDS, backend="torch", stop_at="grok", max_models_per_launch=3,
              figures=False)
    local = grokfast.sweep(TINY, out=tmp_path / "local", **kw)
    remote = grokfast.sweep(TINY, out=tmp_path / "ray", executor="ray", **kw)
    assert len(remote.plan) == 4 and remote.status["launches_done"] == 4
    same_sweeps(remote, local)
    for launch in remote.plan:  # one attempt each, one torch thread (its one declared CPU)
        (start,) = attempts(remote.dir, launch.name)
        (end,) = attempts(remote.dir, launch.name, "finished")
        assert start["threads"] == 1 and start["pid"] == end["pid"] != os.getpid()


def test_a_worker_killed_mid_launch_is_retried_and_resumes_from_its_checkpoint(cluster, tmp_path,
                                                                              long_local):
    out = tmp_path / "ray"
    killer = kill_worker_when_checkpointed(out, "launch_001")
    got = grokfast.sweep(LONG, grid=LONG_GRID, seeds=[0, 1], out=out, executor="ray",
                         max_models_per_launch=2, backend="torch", checkpoint_every=500,
                         figures=False)
    killer.join(timeout=1)
    assert killer.killed is not None, "the worker of launch_001 was never killed"
    first, second = attempts(out, "launch_001")
    assert first["pid"] == killer.killed != second["pid"]
    assert [r["pid"] for r in attempts(out, "launch_001", "finished")] == [second["pid"]]
    events = read_events(out / "launch_001")
    (resumed,) = [e for e in events if e["event"] == "resumed"]
    assert resumed["step"] > 0  # from the checkpoint, not from scratch
    same_sweeps(got, long_local)


def test_one_launch_per_declared_gpu_runs_concurrently(cluster, tmp_path):
    # each launch lasts seconds (4 at once on 2 cores): longer than the spread of their starts
    base = LONG.replace(steps=60_000)  # ~seconds each even on an idle machine
    launches = plan(base, {"weight_decay": [1e-4, 2e-4, 3e-4, 4e-4]}, [0],
                    max_models_per_launch=1)
    assert len(launches) == 4 and base.device == "cpu"
    free_gpus, done = [], threading.Event()

    def watch():  # Ray's view: every declared GPU held by a running launch at once
        while not done.is_set():
            free_gpus.append(ray.available_resources().get("GPU", 0))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    finished = {}
    try:
        RayExecutor(gpus_per_launch=1).run(
            launches, tmp_path, SweepOptions(backend="torch"),
            lambda launch, rows: finished.setdefault(launch.name, rows))
    finally:
        done.set()
        watcher.join()
    assert sorted(finished) == [l.name for l in launches]
    assert all(r["error"] is None and r["steps_done"] == base.steps for rows in finished.values()
               for r in rows)
    assert min(free_gpus) == 0
    starts = [attempts(tmp_path, l.name)[0] for l in launches]
    ends = [attempts(tmp_path, l.name, "finished")[0] for l in launches]
    assert sorted(s["cuda_visible_devices"] for s in starts) == ["0", "1", "2", "3"]
    assert len({s["pid"] for s in starts}) == 4
    assert max(s["time"] for s in starts) < min(e["time"] for e in ends)  # all four overlapped


def test_failures_are_recorded_per_launch_and_the_others_finish(cluster, tmp_path):
    # a launch on CUDA (placed on a declared GPU) raises inside run_launch: no CUDA here. Its
    # cuda:1 became cuda:0, the one GPU the task sees through its CUDA_VISIBLE_DEVICES.
    got = grokfast.sweep(TINY, grid={"device": ["cpu", "cuda:1"]}, seeds=[0], out=tmp_path / "s",
                         executor="ray", backend="torch", figures=False)
    cpu, gpu = got.table
    assert cpu["error"] is None and cpu["steps_done"] == TINY.steps
    assert gpu["stop_reason"] == "error"
    assert "device='cuda:0' but CUDA is not available" in gpu["error"]
    assert attempts(got.dir, gpu["launch"])[0]["cuda_visible_devices"] in ("0", "1", "2", "3")
    assert (got.dir / gpu["launch"] / "error.txt").is_file()

    # a worker lost with no retry left: Ray gives up, the launch gets error rows, the other runs
    launches = plan(LONG, {"weight_decay": [1e-4, 2e-4]}, [0, 1], max_models_per_launch=2)
    options = SweepOptions(backend="torch", checkpoint_every=500)
    killer = kill_worker_when_checkpointed(tmp_path, launches[0].name)
    finished = {}
    RayExecutor(max_retries=0).run(launches, tmp_path, options,
                                   lambda launch, rows: finished.setdefault(launch.name, rows))
    killer.join(timeout=1)
    assert killer.killed is not None
    lost, other = finished[launches[0].name], finished[launches[1].name]
    assert all(r["stop_reason"] == "error" and "WorkerCrashedError" in r["error"] for r in lost)
    assert all(r["error"] is None and r["steps_done"] == LONG.steps for r in other)
    assert len(attempts(tmp_path, launches[0].name)) == 1


def test_joining_a_running_instance_with_another_address_is_refused(cluster, tmp_path):
    launches = plan(TINY, {}, [0])
    with pytest.raises(GrokfastError, match="already initialized"):
        RayExecutor("local").run(launches, tmp_path, SweepOptions(), lambda launch, rows: None)


def test_on_a_joined_cluster_a_launch_no_node_can_run_warns_and_waits(cluster, tmp_path, caplog):
    launches = plan(TINY, {}, [0])
    finished = {}
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="grokfast"):
        RayExecutor(cpus_per_launch=64, should_stop=lambda: time.monotonic() > t0 + 2).run(
            launches, tmp_path, SweepOptions(), lambda l, rows: finished.setdefault(l.name, rows))
    assert "more than any node of the Ray cluster has (4 CPU / 4 GPU)" in caplog.text
    assert "wait until the cluster has such a node" in caplog.text
    assert not finished and not attempts(tmp_path, launches[0].name)  # waited, never ran


def test_a_stop_request_ends_running_launches_at_a_checkpoint_and_starts_no_other(cluster,
                                                                                  tmp_path):
    # 2 CPUs per launch on 4 declared: two launches run, the third waits; stop once both running
    # ones checkpointed. Ray does not promise to start tasks in the order they were submitted, so
    # which two run is Ray's choice: the test follows the attempt record.
    # far longer than the stop takes: it never finishes (100 000 steps of 2 paper-real models
    # took under 8 s on an idle machine once the numba kernels got faster: 2 000 000 here)
    base = LONG.replace(steps=2_000_000)
    launches = plan(base, LONG_GRID, [0, 1], max_models_per_launch=2)
    names = [launch.name for launch in launches]
    finished = {}

    def two_checkpointed():
        return sum(checkpointed(tmp_path / n) for n in names if (tmp_path / n).exists()) >= 2

    RayExecutor(cpus_per_launch=2, should_stop=two_checkpointed).run(
        launches, tmp_path, SweepOptions(backend="torch", checkpoint_every=500),
        lambda launch, rows: finished.setdefault(launch.name, rows))
    started = [n for n in names if attempts(tmp_path, n)]
    assert len(started) == 2 and sorted(finished) == started, (started, finished)
    for name, rows in finished.items():
        assert [(r["stop_reason"], 0 < r["steps_done"] < base.steps) for r in rows] == [
            ("signal", True)] * 2, rows
        events = read_events(tmp_path / name)
        assert events[-1]["event"] == "interrupted" and events[-2]["event"] == "checkpoint"
        assert attempts(tmp_path, name)[0]["threads"] == 2
    waiting = (set(names) - set(started)).pop()
    assert not (tmp_path / waiting).exists()


def test_the_time_budget_stops_running_launches_and_starts_no_other(cluster, tmp_path):
    # 2 CPUs per launch on 4 declared: two launches run until max_time, then the third finds it
    # spent (which two is Ray's choice: it does not promise submission order). The budget counts
    # from the driver's call: a fresh worker importing torch takes seconds of it on a busy
    # machine, and a task that starts after it does not run.
    base = LONG.replace(steps=2_000_000)  # never done within max_time, even on an idle machine
    launches = plan(base, LONG_GRID, [0, 1], max_models_per_launch=2)
    names = [launch.name for launch in launches]
    finished = {}
    t0 = time.monotonic()
    RayExecutor(cpus_per_launch=2).run(
        launches, tmp_path, SweepOptions(backend="torch", max_time=8.0),
        lambda launch, rows: finished.setdefault(launch.name, rows))
    assert time.monotonic() - t0 < 30
    started = [n for n in names if attempts(tmp_path, n)]
    assert finished and sorted(finished) == started and len(started) <= 2, (started, finished)
    for name, rows in finished.items():
        assert [(r["stop_reason"], 0 < r["steps_done"] < base.steps) for r in rows] == [
            ("max_time", True)] * 2, rows
        assert checkpointed(tmp_path / name)  # resumable
    for name in set(names) - set(started):
        assert not (tmp_path / name).exists()
