"""`RayExecutor`: a sweep's launches as Ray tasks, anywhere in a Ray cluster.

The sweep (grokfast.sweep) plans launches and an executor runs them; this one only decides where.
Each launch is one Ray task running `sweep.run_launch` on some node, with its resources declared:

* configs on CUDA: `gpus_per_launch` GPUs (default 1) and `cpus_per_launch` CPUs (default 1). Ray
  sets CUDA_VISIBLE_DEVICES for the task, so the task trains on "cuda:0", its own GPU.
* configs on the CPU: `cpus_per_launch` CPUs (default 1), which is also the task's torch threads.

Ray packs tasks onto the nodes by those numbers. Results stream back as tasks finish (`ray.wait`)
and `on_done(launch, rows)` is called for each, as the local executor does; the sweep keeps its
table in plan order. The rows are bitwise those of a local sweep run with the same torch threads
(models wider than the torch backend's "small" ones step on all their threads, and their float32
statistics depend on how many). Nothing crosses the network but the launch (its configs) and its table rows:
every task reads and writes its launch directory inside the sweep directory itself, so that
directory must be on storage that every node mounts at the same path (the driver resolves it to an
absolute path). Workers import grokfast from their own Python environment: install the same
grokfast there (Ray does not ship this package to them).

Faults. A worker or node lost mid-launch: Ray retries the task (`max_retries`, system failures
only) and run_launch resumes that launch from its last checkpoint, bitwise. A launch that raises
inside run_launch is recorded by the sweep module (error row, error.txt) and returns normally; a
task that Ray gives up on (retries exhausted, the sweep directory not visible on the node) becomes
the same error rows here. The driver killed: `grokfast sweep --resume DIR --ray ...` runs what is
missing. Each attempt of a launch appends a line to DIR/ray/<launch>.jsonl (node, pid,
CUDA_VISIBLE_DEVICES, threads, start and end times), which shows where it ran and what was retried.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from grokfast.errors import GrokfastError

log = logging.getLogger("grokfast")

INSTALL_HINT = 'pip install "grokfast[ray]"'
RECORD_DIR = "ray"
DEFAULT_MAX_RETRIES = 3


def import_ray():
    """The ray module, or GrokfastError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GrokfastError(f"the Ray executor (--ray, executor='ray') needs Ray, which is not "
                            f"installed in this environment: {INSTALL_HINT} (Ray core), or run "
                            f"the sweep without --ray") from None
    return ray


def _check_resources(cpus, gpus) -> None:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if cpus is not None and not (number(cpus) and cpus >= 1 and float(cpus).is_integer()):
        raise GrokfastError(f"cpus_per_launch={cpus!r} must be a positive integer")
    if gpus is not None and not (number(gpus) and 0 < gpus <= 1):
        raise GrokfastError(f"gpus_per_launch={gpus!r} must be 1, or a fraction to share a GPU "
                            f"between launches (0.5: two per GPU); a launch runs on one device")


class RayExecutor:
    """Runs launches as Ray tasks (see the module docstring).

    address: "local" starts a Ray instance on this machine for this sweep (every core of a
    workstation) and stops it at the end; "auto" joins the cluster this machine belongs to (started
    with `ray start`); "HOST:PORT" or "ray://HOST:PORT" joins that cluster; None is Ray's default
    (RAY_ADDRESS, else a cluster started on this machine, else a local instance). When this
    process has already called ray.init, that connection is used (address must then be None).
    cpus_per_launch: CPUs each launch declares and its torch threads (default 1).
    gpus_per_launch: the share of a GPU each launch declares (1, or 0.5 for two launches per
    GPU, ...); default 1 when the launch's configs are on CUDA, else none. Declared for CPU
    configs, the tasks are placed one per GPU but train on the CPU (a placement check without
    GPUs).
    max_retries: Ray's retries of a task whose worker or node died (each resumes the launch).
    init_options: extra ray.init keywords for a local instance (num_cpus, num_gpus, ...).
    should_stop(): polled while launches run (the sweep's Ctrl-C handler); once true, every task is
    cancelled: a running launch stops after its current chunk with a checkpoint and returns its
    rows (stop reason "signal"), a launch not started stays pending, for --resume.
    """

    def __init__(self, address: Optional[str] = None, cpus_per_launch: Optional[int] = None,
                 gpus_per_launch: Optional[float] = None, *,
                 max_retries: int = DEFAULT_MAX_RETRIES, init_options: Optional[dict] = None,
                 should_stop: Optional[Callable[[], bool]] = None):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise GrokfastError(f"ray address {address!r}: use 'local', 'auto', HOST:PORT or "
                                f"ray://HOST:PORT")
        _check_resources(cpus_per_launch, gpus_per_launch)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise GrokfastError(f"max_retries={max_retries!r} must be an integer ≥ 0")
        if init_options is not None and address not in (None, "local"):
            raise GrokfastError(f"init_options start a local Ray instance; address={address!r} "
                                f"joins an existing cluster, whose resources `ray start` set")
        self.ray = import_ray()
        self.address = address
        self.cpus_per_launch = int(cpus_per_launch) if cpus_per_launch is not None else 1
        self.gpus_per_launch = gpus_per_launch
        self.max_retries = max_retries
        self.init_options = dict(init_options or {})
        self.should_stop = should_stop

    # ------------------------------------------------------------------------------ connection
    def _connect(self) -> bool:
        """Connect to (or start) Ray; True when this call started the connection."""
        ray = self.ray
        if ray.is_initialized():
            if self.address is not None:
                raise GrokfastError(f"Ray is already initialized in this process; pass "
                                    f"address=None to use that connection, not "
                                    f"{self.address!r}")
            return False
        kwargs = dict(address=self.address, logging_level=logging.WARNING)
        if self.address in (None, "local"):
            kwargs.update(include_dashboard=False)
            kwargs.update(self.init_options)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            auth = ("" if self.address in (None, "auto") else
                    "; a cluster with token authentication also needs RAY_AUTH_MODE=token and its "
                    "token (~/.ray/auth_token or RAY_AUTH_TOKEN) here")
            raise GrokfastError(f"cannot reach a Ray cluster at {self.address!r} ({e}); start one "
                                f"with `ray start --head`, or use --ray local{auth}") from None
        return True

    def _resources(self, launch) -> dict:
        on_cuda = launch.configs[0].device.startswith("cuda")
        gpus = self.gpus_per_launch if self.gpus_per_launch is not None else (1 if on_cuda else 0)
        return dict(num_cpus=self.cpus_per_launch, num_gpus=gpus)

    def _check_feasible(self, launches) -> None:
        """When no node of the cluster can run a launch: GrokfastError on the local instance this
        executor started (nothing will ever join it), else a warning (an autoscaler may still add
        such nodes; meanwhile Ray reports the task as waiting for resources)."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for launch in launches:
            need = self._resources(launch)
            if any(r.get("CPU", 0) >= need["num_cpus"] and r.get("GPU", 0) >= need["num_gpus"]
                   for r in nodes):
                continue
            have = ", ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU"
                             for r in nodes) or "no node"
            hint = ("configs on CUDA need a GPU per launch: add nodes with GPUs, or --set "
                    "device=cpu" if need["num_gpus"] else "lower --cpus-per-launch")
            message = (f"{launch.name} needs {need['num_cpus']:g} CPU and {need['num_gpus']:g} "
                       f"GPU, more than any node of the Ray cluster has ({have}): {hint}")
            if self.address == "local":
                raise GrokfastError(message)
            log.warning("%s; the launches wait until the cluster has such a node", message)
            return

    # ------------------------------------------------------------------------------ run
    def run(self, launches: Sequence, sweep_dir, options, on_done: Callable[[object, list], None]
            ) -> None:
        """Run `launches` as Ray tasks; on_done(launch, rows) as each finishes (any order).

        options.max_time is the sweep's budget, counted from this call (a worker's start-up is
        part of it): a launch gets the time left when its task starts, and a task that starts after
        it is spent does not run (the launch stays pending, for --resume)."""
        from .launch import failed_rows

        if not launches:
            return
        ray = self.ray
        sweep_dir = Path(sweep_dir).resolve()
        (sweep_dir / RECORD_DIR).mkdir(parents=True, exist_ok=True)
        deadline = None if options.max_time is None else time.time() + options.max_time
        started = self._connect()
        pending = {}
        try:
            self._check_feasible(launches)
            task = ray.remote(run_launch_task)
            for launch in launches:
                res = self._resources(launch)
                ref = task.options(**res, max_retries=self.max_retries, retry_exceptions=False,
                                   name=f"grokfast {sweep_dir.name}/{launch.name}").remote(
                    launch, str(sweep_dir), options, deadline, res["num_cpus"])
                pending[ref] = launch
            cancelled = False
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not cancelled and self.should_stop is not None and self.should_stop():
                    for ref in pending:  # a running task gets SIGINT: its launch stops gracefully
                        ray.cancel(ref)
                    cancelled = True
                for ref in done:
                    launch = pending.pop(ref)
                    try:
                        rows = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        rows = None  # cancelled before it started: pending, for --resume
                    except ray.exceptions.RayError as e:
                        rows = failed_rows(launch, _task_error(e))
                    if rows is not None:  # None: not run (cancelled, or no time left)
                        on_done(launch, rows)
        finally:
            for ref in pending:  # interrupted: the launches keep their last checkpoints
                ray.cancel(ref)
            if started:
                ray.shutdown()


def _task_error(e) -> str:
    """One line for the table's error column from a Ray error."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (Ray gave up on the task)"


def run_launch_task(launch, sweep_dir: str, options, deadline: Optional[float], threads: int):
    """The body of one Ray task: sweep.run_launch(launch, sweep_dir, options) on this worker, with
    `threads` torch threads, the time left before `deadline` (wall clock) and the device Ray gave
    it; None when the deadline passed before it started. Appends its attempt to the record."""
    from .launch import run_launch

    d = Path(sweep_dir)
    if not (d / RECORD_DIR).is_dir():  # the driver made it before submitting any task
        raise GrokfastError(f"the sweep directory {d} is not visible on node "
                            f"{socket.gethostname()}: put it on storage that every node of the "
                            f"Ray cluster mounts at the same path")
    max_time = options.max_time
    if deadline is not None:
        max_time = deadline - time.time()
        if max_time <= 0:
            return None
    if launch.configs[0].device.startswith("cuda:"):  # Ray's CUDA_VISIBLE_DEVICES renumbers
        launch = dataclasses.replace(launch, configs=tuple(c.replace(device="cuda:0")
                                                           for c in launch.configs))
    # handle_signals: ray.cancel delivers SIGINT, which then stops the launch after its current
    # chunk with a checkpoint (its rows say "signal") instead of losing the work since the last one
    options = dataclasses.replace(options, threads=options.threads or threads, max_time=max_time,
                                  handle_signals=True)
    record = d / RECORD_DIR / f"{launch.name}.jsonl"
    attempt = dict(launch=launch.name, node=socket.gethostname(), pid=os.getpid(),
                   cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                   threads=options.threads)
    _exit_when_orphaned()
    _append(record, dict(attempt, event="started", time=time.time()))
    rows = run_launch(launch, d, options)
    _append(record, dict(attempt, event="finished", time=time.time(),
                         stop_reasons=[r["stop_reason"] for r in rows]))
    return rows


def _exit_when_orphaned(poll: float = 0.2) -> None:
    """End this worker process at once if its parent, the node's raylet, dies.

    Ray retries the task elsewhere when a node's raylet is lost (or, for a local instance, the
    driver that started it was killed and --resume starts the launch again), but the worker
    itself is not killed: it would go on writing the launch directory beside the new attempt.
    Its last checkpoint is where the new attempt resumes, so stopping here loses nothing."""
    global _watching
    if _watching == os.getpid():  # Ray reuses a worker for many tasks: one watcher each
        return
    _watching = os.getpid()
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="grokfast-orphan-watch", daemon=True).start()


_watching: Optional[int] = None


def _append(path: Path, obj: dict) -> None:
    from grokfast.store.ownership import open_append  # never through a symlink
    with open_append(path) as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_record(sweep_dir) -> list[dict]:
    """Every attempt line of DIR/ray/*.jsonl (where each launch ran, retries included), in
    launch-name order, each launch's lines in the order written."""
    lines = []
    for path in sorted((Path(sweep_dir) / RECORD_DIR).glob("*.jsonl")):
        lines += [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return lines
