"""One launch of a sweep, the unit of work for any executor: train it, resume it from its
checkpoint, or read back its rows when it finished; the same rows wherever it runs."""
from __future__ import annotations

import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from grokfast.backends.registry import make_stepper
from grokfast.backends.torch.paths import intra_op_threads
from grokfast.config import Config
from grokfast.data import make_dataset
from grokfast.engine import run
from grokfast.engine.monitor import diverged_steps
from grokfast.errors import GrokfastError
from grokfast.store.checkpoint import CHECKPOINT
from grokfast.store.history import RUN_FILE, atomic_write, read_run
from grokfast.store.ownership import Locked, clear_run, owned, real_dir, translate
from grokfast.store.result import Result
from grokfast.tracking.tensorboard import sweep_logger

from .options import SweepOptions
from .plan import Launch
from .table import COLUMNS

ERROR_FILE = "error.txt"


def lone_chunk(config: Config, backend: str) -> int:
    """The chunk the engine would use for `config` trained alone on `backend` (its early-stop
    granularity), from a one-model stepper."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise GrokfastError(f"device={config.device!r} but CUDA is not available here; use "
                            f"--set device=cpu")
    stepper = make_stepper(backend, [config], make_dataset(config), torch.device(config.device))
    return getattr(stepper, "preferred_chunk", 1000)


def launch_finished(launch_dir: Path) -> bool:
    """True when the launch directory holds a finished run (every model saved)."""
    d = Path(launch_dir)
    if not (d / RUN_FILE).is_file():
        return False
    run = read_run(d)
    return run.get("status") == "finished" and all((d / m / "result.json").is_file()
                                                   for m in run["models"])


def _train_launch(launch: Launch, d: Path, options: SweepOptions, on_chunk) -> list:
    with owned(d):
        if launch_finished(d):
            return [Result.load(d / m) for m in read_run(d)["models"]]
        if not (d / CHECKPOINT).is_file():
            clear_run(d)  # started but never checkpointed (or failed): it starts over
        return _run_launch_dir(launch, d, options, on_chunk)


def _run_launch_dir(launch: Launch, d: Path, options: SweepOptions, on_chunk) -> list:
    configs = list(launch.configs)
    kw = dict(options.run_options(), out=d, on_chunk=on_chunk)
    if options.tensorboard:
        kw["tensorboard"] = sweep_logger(d.parent, launch.axes, configs,
                                         lambda i, r: _row(launch, configs[i], r))
    if (d / CHECKPOINT).is_file():
        kw.pop("chunk_steps")  # the checkpoint's
        return run(configs, resume=d, **kw)
    kw["chunk_steps"] = options.chunk_steps or lone_chunk(configs[0], options.backend)
    return run(configs, single=False, **kw)


def run_launch(launch: Launch, sweep_dir, options: SweepOptions, *,
               on_chunk: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Run one launch in sweep_dir/launch.name and return its table rows (one dict per model, keys
    the results.csv columns): the saved rows if it already finished, a bitwise resume if it holds a
    checkpoint, else a fresh run. Deterministic: the same rows (but wall_time) wherever it runs.
    An exception is recorded (error.txt, rows with stop_reason "error" and the `error` column) and
    not raised. on_chunk(steps, models stepped) is called after every chunk (progress bars)."""
    d = Path(sweep_dir) / launch.name
    threads = nullcontext() if options.threads is None else intra_op_threads(
        options.threads, torch.device("cpu"))
    try:
        with threads:
            results = _train_launch(launch, d, options, on_chunk)
    except OSError as e:  # the disk, not the launch: stop the sweep (resumable), say what to do
        raise translate(e, d) from None
    except Exception as e:  # recorded in the table; the other launches go on
        message = f"{type(e).__name__}: {e}"
        if not isinstance(e, Locked):  # a directory another process holds is not written to
            _record_error(d, traceback.format_exc())
        return failed_rows(launch, message)
    (d / ERROR_FILE).unlink(missing_ok=True)
    return [_row(launch, c, r) for c, r in zip(launch.configs, results)]


def _record_error(d: Path, text: str) -> None:
    """error.txt of a failed launch, where the disk still takes it (the row records it anyway)."""
    try:
        real_dir(d, create=True)
        atomic_write(d / ERROR_FILE, lambda f: f.write(text.encode()))
    except (OSError, GrokfastError):
        pass


def _row(launch: Launch, c: Config, r) -> dict:
    f = r.final or {}
    row = {a: getattr(c, a) for a in launch.axes}
    row.update(seed=c.seed, memorization_step=r.memorization_step, grok_step=r.grok_step,
               final_train_loss=f.get("train_loss"), final_train_acc=f.get("train_acc"),
               final_test_loss=f.get("test_loss"), final_test_acc=f.get("test_acc"),
               final_norm=f.get("norm"), steps_done=int(r.steps_done), stop_reason=r.stop_reason,
               diverged=bool(r.diverged), diverged_steps=diverged_steps(r.diverged) or None,
               launch=launch.name, wall_time=float(r.wall_time), error=None)
    return row


def failed_rows(launch: Launch, error: str) -> list[dict]:
    """The rows of a launch that raised `error` (executors call this for a launch that never
    returned, e.g. a lost worker)."""
    rows = []
    for c in launch.configs:
        row = {a: getattr(c, a) for a in launch.axes}
        row.update({k: None for k in COLUMNS})
        row.update(seed=c.seed, steps_done=0, stop_reason="error", diverged=False,
                   launch=launch.name, error=error)
        rows.append(row)
    return rows
