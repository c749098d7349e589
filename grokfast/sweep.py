"""`grokfast sweep`: every combination of a grid of config values × seeds, packed into launches.

A sweep is a *plan* of launches and an *executor* that runs them:

    launches = plan(base, grid, seeds)                  # list[Launch], in plan order
    rows = run_launch(launches[0], sweep_dir, options)  # one launch: train, resume or read back
    LocalExecutor().run(launches, sweep_dir, options, on_done)   # one after another, here
    # grokfast.ray_executor.RayExecutor: the same launches, anywhere in a Ray cluster

A launch is one `engine.run` of a batch of models that share `engine.SHARED_FIELDS` (the data, the
shapes and the loop); it has its own run directory, checkpoints and resume (grokfast.history).
Plan rows are the grid's combinations in `itertools.product` order (first axis slowest) with the
seeds innermost. Rows that share every shared field are packed into launches of at most
`launch_capacity` models (a memory cap, see `model_bytes`) in plan order; rows that differ in a
shared field (width, p, train_frac, optimizer, steps, …) go to separate launches, run one after
another. Every model equals, bitwise, the same config trained alone (`grokfast.train(config,
stop_at=..., chunk_steps=...)` with the sweep's options): the torch backend's batch invariance, and
the early-stop granularity pinned to a lone model's chunk (`lone_chunk`).

The sweep directory (DIR):

    DIR/plan.json        base config, grid, seeds, options, every plan row and its launch
    DIR/status.json      running / finished / interrupted, launches done, wall time, model-steps/s
    DIR/sweep.lock       held (flock) by the process running the sweep
    DIR/results.csv      one row per model of every finished launch, in plan order (COLUMNS),
                         rewritten atomically after every launch
    DIR/launch_000/      each launch's run directory as `grokfast train --seeds` writes it
                         (run.json, history/, events.jsonl, checkpoint.pt, model_000/, …) and
                         error.txt when the launch raised
    DIR/phase_<a>__<b>.png, DIR/time_to_grok_<a>.png   figures (grokfast.phases)

`sweep(..., resume=True)` (`grokfast sweep --resume DIR`) keeps finished launches, resumes an
interrupted one from its checkpoint (bitwise) and runs the rest.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import os
import shutil
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .config import Config, field_names, parse_value
from .errors import GrokfastError, check_choice, closest
from .history import RUN_FILE, atomic_json, atomic_write, read_run

PLAN_FILE = "plan.json"
STATUS_FILE = "status.json"
RESULTS_FILE = "results.csv"
ERROR_FILE = "error.txt"
LOCK_FILE = "sweep.lock"
SWEEP_FORMAT = "grokfast-sweep/1"
# Default memory budget of one launch: the model axis is cut so that model_bytes × models ≤ this.
DEFAULT_LAUNCH_MEMORY = 2 << 30

# results.csv: the swept fields first (grid order), then these.
COLUMNS = ("seed", "memorization_step", "grok_step", "final_train_loss", "final_train_acc",
           "final_test_loss", "final_test_acc", "final_norm", "steps_done", "stop_reason",
           "diverged", "launch", "wall_time", "error")
_INT_COLUMNS = ("seed", "memorization_step", "grok_step", "steps_done")
_FLOAT_COLUMNS = ("final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
                  "final_norm", "wall_time")
# stop reasons of a launch that stopped early and continues with --resume
RESUMABLE_STOPS = ("signal", "max_time", "max_steps")


# ---------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Launch:
    """One batch of models run together: plan rows `rows` (model order) with configs `configs`,
    which share engine.SHARED_FIELDS, in the directory `name` of the sweep directory. `axes`: the
    swept field names (their values head each table row)."""

    index: int
    name: str
    rows: tuple[int, ...]
    configs: tuple[Config, ...]
    axes: tuple[str, ...] = ()

    @property
    def n_models(self) -> int:
        return len(self.configs)

    @property
    def model_steps(self) -> int:
        """Steps × models if no model stops early."""
        return self.configs[0].steps * len(self.configs)


@dataclass(frozen=True)
class SweepOptions:
    """Everything a launch needs besides its configs (picklable; the same for every launch).

    backend, stop_at, stop_patience, checkpoint_every, checkpoint_seconds: as grokfast.train.
    max_time: seconds this call may train — for run_launch, that launch; for sweep(), the whole
    sweep (LocalExecutor hands each launch the time left; the stopped launch resumes with --resume).
    chunk_steps: the loop's chunk, which is also the granularity of stop_at="grok"; None: the chunk
    a lone model of the launch would use (lone_chunk), so that a swept model stops at the step it
    would stop at trained alone. threads: torch threads while a launch runs (None: leave as is).
    handle_signals: Ctrl-C / SIGTERM stop the launch after its current chunk, checkpointed.
    curves: draw each model's curves.png (off by default: ~0.5 s of matplotlib per model; draw one
    later with grokfast.result.plot_curves(SweepResult.result(i), path)).
    """

    backend: str = "auto"
    stop_at: Optional[str] = None
    stop_patience: Optional[int] = None
    max_time: Optional[float] = None
    checkpoint_every: Optional[int] = None
    checkpoint_seconds: Optional[float] = None
    chunk_steps: Optional[int] = None
    threads: Optional[int] = None
    handle_signals: bool = False
    curves: bool = False

    def validate(self) -> "SweepOptions":
        from .engine import BACKENDS, STOP_AT
        check_choice("backend", self.backend, BACKENDS)
        check_choice("stop_at", self.stop_at, STOP_AT)
        for name in ("stop_patience", "checkpoint_every", "chunk_steps", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise GrokfastError(f"{name}={v!r} must be a positive integer")
        for name in ("max_time", "checkpoint_seconds"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                  or not math.isfinite(v) or v <= 0):
                raise GrokfastError(f"{name}={v!r} must be a positive number of seconds")
        return self


def option_names() -> tuple:
    return tuple(f.name for f in dataclasses.fields(SweepOptions))


def parse_values(name: str, text: str) -> list:
    """The values of one grid axis from text: "a,b,c", "logspace:A:B:N" (N values from A to B,
    geometric), "linspace:A:B:N" or "range:A:B[:STEP]" (integers, B excluded)."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    if kind in ("logspace", "linspace", "range"):
        parts = rest.split(":")
        try:
            if kind == "range":
                if len(parts) not in (2, 3):
                    raise ValueError
                nums = [int(x) for x in parts]
                values = list(range(*nums))
            else:
                if len(parts) != 3:
                    raise ValueError
                a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
                if n < 1 or not (math.isfinite(a) and math.isfinite(b)):
                    raise ValueError
                if kind == "logspace" and (a <= 0 or b <= 0):
                    values = None
                else:
                    raw = np.geomspace(a, b, n) if kind == "logspace" else np.linspace(a, b, n)
                    values = [float(f"{v:.12g}") for v in raw]
        except ValueError:
            raise GrokfastError(f"{name}={text}: write {kind}:A:B:N (N values from A to B)"
                                if kind != "range" else
                                f"{name}={text}: write range:A:B or range:A:B:STEP (integers, B "
                                f"excluded)") from None
        if values is None:
            raise GrokfastError(f"{name}={text}: logspace needs positive ends A, B > 0")
        default = _default(name)
        if isinstance(default, int) and not isinstance(default, bool) and kind != "range":
            values = [int(round(v)) for v in values]
        values = [parse_value(name, repr(v)) for v in values]
    else:
        if not text or any(not t.strip() for t in text.split(",")):
            raise GrokfastError(f"{name}={text!r}: list the values separated by commas (e.g. "
                                f"{name}=1e-4,2e-4), or write logspace:A:B:N, linspace:A:B:N or "
                                f"range:A:B")
        if name == "betas":
            raise GrokfastError("betas cannot be swept from text (its values hold commas); pass "
                                "grid={'betas': [(0.9, 0.98), …]} from Python")
        values = [parse_value(name, t.strip()) for t in text.split(",")]
    if not values:
        raise GrokfastError(f"{name}={text}: gives no value")
    return values


def _default(name: str):
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


def parse_grid_arg(text: str) -> tuple[str, list]:
    """One `--grid NAME=VALUES` argument → (name, values); see parse_values for VALUES."""
    if "=" not in text:
        raise GrokfastError(f"--grid {text!r}: write NAME=VALUES, e.g. --grid weight_decay=1e-4,"
                            f"2e-4 or --grid lr=logspace:0.1:1:5")
    name, values = text.split("=", 1)
    name = name.strip()
    _check_axis_name(name)
    return name, parse_values(name, values)


def _check_axis_name(name: str) -> None:
    if name == "seed":
        raise GrokfastError("seeds are given apart from the grid: use --seeds A:B (seeds=[...])")
    valid = field_names()
    if name not in valid:
        raise GrokfastError(f"--grid {name}: not a config field{closest(name, valid)}; valid "
                            f"fields: {', '.join(f for f in valid if f != 'seed')}")


def check_grid(grid) -> dict:
    """name → list of values, validated: config fields (not seed), each with ≥ 1 distinct value."""
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise GrokfastError(f"grid must be a dict name → list of values, got {type(grid).__name__}")
    out = {}
    for name, values in grid.items():
        _check_axis_name(name)
        if isinstance(values, str):
            values = parse_values(name, values)
        elif isinstance(values, (int, float, bool)) or values is None:
            values = [values]
        elif name == "betas" and isinstance(values, tuple) and all(
                isinstance(v, (int, float)) for v in values):
            values = [values]
        else:
            values = list(values)
        if not values:
            raise GrokfastError(f"grid axis {name!r} is empty: give it at least one value")
        if name == "betas":
            values = [tuple(float(b) for b in v) for v in values]
        for i, v in enumerate(values):
            if v in values[:i]:
                raise GrokfastError(f"grid axis {name!r} lists {v!r} twice: give distinct values")
        out[name] = values
    return out


def check_seeds(seeds, base: Config) -> list[int]:
    if seeds is None:
        return [base.seed]
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise GrokfastError(f"seeds={seeds!r}: give a list of integers, e.g. seeds=range(8)") from None
    if not seeds:
        raise GrokfastError("seeds is empty: give at least one seed, e.g. seeds=range(4)")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise GrokfastError(f"seeds={seeds}: give distinct seeds ≥ 0")
    return seeds


def model_bytes(c: Config) -> int:
    """Estimated memory of one model in a launch of the torch or triton backend: θ, the gradient
    and two scratch copies (4 × P values, P = d_in·width + width·p), optimizer state (1 × P for
    sgd, 2 × P for adam/adamw), filter state (1 × P for EMA, window + 1 × P for MA), training
    activations (about 4·N·width + 2·N·p, one more N·width for the quadratic activation), the
    evaluation's activations (max(N, N_test)·(width + p)) and the history rows of one 1000-step
    chunk (16 statistics, float64)."""
    P = c.d_in * c.width + c.width * c.p
    N, T = c.n_train, c.n_pairs - c.n_train
    item = 8 if c.dtype == "float64" else 4
    vectors = 4 + {"sgd": 1, "adam": 2, "adamw": 2}.get(c.optimizer, 0)
    if c.grad_filter == "ema":
        vectors += 1
    elif c.grad_filter == "ma":
        vectors += c.filter_window + 1
    acts = 4 * N * c.width + 2 * N * c.p + (0 if c.activation == "relu" else N * c.width)
    evals = max(N, T) * (c.width + c.p)
    rows = 16 * 8 * -(-1000 // c.log_every)
    return item * (vectors * P + acts + evals) + rows


def launch_capacity(c: Config, max_models_per_launch: Optional[int] = None,
                    launch_memory: Optional[float] = None) -> int:
    """Models per launch: launch_memory (bytes, default DEFAULT_LAUNCH_MEMORY) // model_bytes(c),
    at least 1, at most max_models_per_launch."""
    budget = DEFAULT_LAUNCH_MEMORY if launch_memory is None else launch_memory
    cap = max(1, int(budget // model_bytes(c)))
    if max_models_per_launch is not None:
        cap = min(cap, max_models_per_launch)
    return cap


def shared_key(c: Config) -> tuple:
    from .engine import SHARED_FIELDS
    return tuple(getattr(c, f) for f in SHARED_FIELDS)


def plan(base: Config, grid: dict, seeds, *, max_models_per_launch: Optional[int] = None,
         launch_memory: Optional[float] = None) -> list[Launch]:
    """Every combination of `grid` (name → values; first axis slowest) × `seeds` (innermost),
    as launches: rows sharing engine.SHARED_FIELDS packed in plan order, at most
    launch_capacity(...) models each; groups in order of their first row. A combination that
    makes an invalid config raises GrokfastError naming it, before anything runs."""
    if not isinstance(base, Config):
        raise GrokfastError(f"sweep needs a grokfast.Config, got {type(base).__name__}; use "
                            f"Config.preset('paper-real') or Config(...)")
    axes = check_grid(grid)
    seeds = check_seeds(seeds, base)
    if max_models_per_launch is not None and (not isinstance(max_models_per_launch, int)
                                              or max_models_per_launch < 1):
        raise GrokfastError(f"max_models_per_launch={max_models_per_launch!r} must be a positive "
                            f"integer")
    if launch_memory is not None and not (isinstance(launch_memory, (int, float))
                                          and launch_memory > 0):
        raise GrokfastError(f"launch_memory={launch_memory!r} must be a positive number of bytes")
    configs = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        try:
            point = base.replace(**values)
        except GrokfastError as e:
            raise GrokfastError(f"grid point {_describe(values)} is not a valid config: {e}") from None
        configs += [point.replace(seed=s) for s in seeds]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(shared_key(c), []).append(i)
    launches = []
    for rows in groups.values():
        cap = launch_capacity(configs[rows[0]], max_models_per_launch, launch_memory)
        for k in range(0, len(rows), cap):
            part = tuple(rows[k:k + cap])
            n = len(launches)
            launches.append(Launch(n, f"launch_{n:03d}", part, tuple(configs[i] for i in part),
                                   tuple(axes)))
    return launches


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "(no axis)"


# ---------------------------------------------------------------------------------------- launch
def lone_chunk(config: Config, backend: str) -> int:
    """The chunk the engine would use for `config` trained alone on `backend` (its early-stop
    granularity), from a one-model stepper."""
    import torch

    from .data import make_dataset
    from .engine import stepper_class
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise GrokfastError(f"device={config.device!r} but CUDA is not available here; use "
                            f"--set device=cpu")
    stepper = stepper_class(backend, config.device)([config], make_dataset(config),
                                                    torch.device(config.device))
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
    from .checkpoint import CHECKPOINT
    from .engine import run
    from .result import Result

    configs = list(launch.configs)
    if launch_finished(d):
        return [Result.load(d / m) for m in read_run(d)["models"]]
    common = dict(max_time=options.max_time, checkpoint_every=options.checkpoint_every,
                  checkpoint_seconds=options.checkpoint_seconds,
                  handle_signals=options.handle_signals, on_chunk=on_chunk,
                  curves=options.curves)
    if (d / CHECKPOINT).is_file():
        return run(configs, backend=options.backend, out=d, resume=d,
                   stop_at=options.stop_at, stop_patience=options.stop_patience, **common)
    if d.exists():
        shutil.rmtree(d)  # started but never checkpointed (or failed): nothing to keep
    chunk = options.chunk_steps or lone_chunk(configs[0], options.backend)
    return run(configs, backend=options.backend, out=d, single=False, stop_at=options.stop_at,
               stop_patience=options.stop_patience, chunk_steps=chunk, **common)


def run_launch(launch: Launch, sweep_dir, options: SweepOptions, *,
               on_chunk: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Run one launch in sweep_dir/launch.name and return its table rows (one dict per model, keys
    the results.csv columns): the saved rows if it already finished, a bitwise resume if it holds a
    checkpoint, else a fresh run. Deterministic: the same rows (but wall_time) wherever it runs.
    An exception is recorded (error.txt, rows with stop_reason "error" and the `error` column) and
    not raised. on_chunk(steps, models stepped) is called after every chunk (progress bars)."""
    import torch

    from .torch_paths import intra_op_threads

    d = Path(sweep_dir) / launch.name
    threads = nullcontext() if options.threads is None else intra_op_threads(
        options.threads, torch.device("cpu"))
    try:
        with threads:
            results = _train_launch(launch, d, options, on_chunk)
    except Exception as e:  # recorded in the table; the other launches go on
        message = f"{type(e).__name__}: {e}"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / ERROR_FILE, lambda f: f.write(traceback.format_exc().encode()))
        return failed_rows(launch, message)
    (d / ERROR_FILE).unlink(missing_ok=True)
    return [_row(launch, c, r) for c, r in zip(launch.configs, results)]


def _row(launch: Launch, c: Config, r) -> dict:
    f = r.final or {}
    row = {a: getattr(c, a) for a in launch.axes}
    row.update(seed=c.seed, memorization_step=r.memorization_step, grok_step=r.grok_step,
               final_train_loss=f.get("train_loss"), final_train_acc=f.get("train_acc"),
               final_test_loss=f.get("test_loss"), final_test_acc=f.get("test_acc"),
               final_norm=f.get("norm"), steps_done=int(r.steps_done), stop_reason=r.stop_reason,
               diverged=bool(r.diverged), launch=launch.name, wall_time=float(r.wall_time),
               error=None)
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


class LocalExecutor:
    """Runs launches one after another in this process.

    on_chunk(launch, steps, models stepped): progress hook, after every chunk of a launch.
    should_stop(): checked between
    launches (the sweep's Ctrl-C handler). With options.max_time, the sweep's budget: each launch
    gets the time left, and none starts once it is spent. A launch stopped by a signal or the time
    budget ends the run (the rest stays pending, for --resume)."""

    def __init__(self, on_chunk: Optional[Callable[[Launch, int, int], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None):
        self.on_chunk = on_chunk
        self.should_stop = should_stop

    def run(self, launches: Sequence[Launch], sweep_dir, options: SweepOptions,
            on_done: Callable[[Launch, list], None]) -> None:
        deadline = None if options.max_time is None else time.monotonic() + options.max_time
        for launch in launches:
            if self.should_stop is not None and self.should_stop():
                return
            opts = options
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                opts = dataclasses.replace(options, max_time=left)
            hook = None if self.on_chunk is None else functools.partial(self.on_chunk, launch)
            rows = run_launch(launch, sweep_dir, opts, on_chunk=hook)
            on_done(launch, rows)
            if any(r["stop_reason"] in RESUMABLE_STOPS for r in rows):
                return


# ---------------------------------------------------------------------------------------- table
def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def table_csv(rows: Sequence[dict], axes: Sequence[str]) -> str:
    header = [*axes, *COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r.get(k)) for k in header])
    return buf.getvalue()


def _parse_cell(name: str, text: str, axes: Sequence[str]):
    if text == "":
        return None
    if name in axes:
        if name == "betas":
            return tuple(float(x) for x in text.strip("()[] ").split(","))
        return parse_value(name, text)
    if name in _INT_COLUMNS:
        return int(text)
    if name in _FLOAT_COLUMNS:
        return float(text)
    if name == "diverged":
        return text == "True"
    return text


def read_table(path: Path, axes: Sequence[str]) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _parse_cell(k, v, axes) for k, v in r.items()} for r in csv.DictReader(f)]


class _Table:
    """The rows known so far, by plan row; results.csv rewritten atomically on every change."""

    def __init__(self, sweep_dir: Path, axes: Sequence[str]):
        self.path = sweep_dir / RESULTS_FILE
        self.axes = tuple(axes)
        self.by_row: dict[int, dict] = {}

    def set(self, launch: Launch, rows: Sequence[dict]) -> None:
        for i, r in zip(launch.rows, rows):
            self.by_row[i] = r
        self.write()

    def write(self) -> None:
        text = table_csv([self.by_row[i] for i in sorted(self.by_row)], self.axes)
        atomic_write(self.path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------------------- progress
class _SweepBar:
    """One bar for the whole sweep. It fills with the planned work, steps × models of every
    launch (a launch is busy with all its models until it ends; one that ends early, its models
    stopped, fills the rest at once), so its rate and ETA are the machine's; the postfix adds the
    model-steps of models still training per second, models done and grokked."""

    def __init__(self, launches: Sequence[Launch], done: Sequence[Launch]):
        from tqdm.auto import tqdm
        self.n_models = sum(l.n_models for l in launches)
        self.models_done = sum(l.n_models for l in done)
        self.filled: dict[int, int] = {}
        self.trained = 0
        self.grokked = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=sum(l.model_steps for l in launches),
                        initial=sum(l.model_steps for l in done), unit="model-step",
                        unit_scale=True, dynamic_ncols=True, smoothing=0.1, desc="sweep")
        self._postfix()

    def _postfix(self) -> None:
        rate = self.trained / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"training {rate:,.0f} model-steps/s, models "
                                 f"{self.models_done}/{self.n_models} done, grokked "
                                 f"{self.grokked}", refresh=False)

    def chunk(self, launch: Launch, steps: int, stepped: int) -> None:
        self.trained += steps * stepped
        n = steps * launch.n_models
        self.filled[launch.index] = self.filled.get(launch.index, 0) + n
        self._postfix()
        self.bar.update(n)

    def launch_done(self, launch: Launch, rows: Sequence[dict]) -> None:
        filled = self.filled.pop(launch.index, 0)
        if any(r["stop_reason"] in RESUMABLE_STOPS for r in rows):
            return  # stopped early: its rest is still to run (--resume)
        self.bar.update(max(0, launch.model_steps - filled))
        self.models_done += launch.n_models
        self.grokked += sum(r["grok_step"] is not None for r in rows)
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------- sweep
def sweep(config: Optional[Config] = None, *, grid=None, seeds=None, out=None, executor="local",
          ray_address: Optional[str] = None, cpus_per_launch: Optional[int] = None,
          resume: bool = False, progress: bool = False, max_models_per_launch: Optional[int] = None,
          launch_memory: Optional[float] = None, figures: bool = True, phase_rules=None,
          **options):
    """Train every combination of `grid` × `seeds` and return the SweepResult (also saved in out).

    grid: config field → values (a list, or text as `grokfast sweep --grid`: "1e-4,2e-4",
    "logspace:1e-5:1e-2:7", "linspace:A:B:N", "range:A:B"); any field but seed, shape-changing
    ones included. seeds: list of seeds (default: config.seed). options: SweepOptions fields
    (backend, stop_at, stop_patience, max_time, checkpoint_every, checkpoint_seconds, chunk_steps,
    threads, handle_signals). executor: "local" (one launch after another here) or "ray"
    (grokfast.ray_executor.RayExecutor(address=ray_address, cpus_per_launch=...)).
    max_models_per_launch / launch_memory (bytes): the cap on models per launch (launch_capacity).
    resume: continue the sweep in out (config, grid and seeds may be left out: the saved ones).
    figures: write the phase diagrams and time-to-grok plots (grokfast.phases, with phase_rules).

    The older form `sweep(config, seed=range(4), weight_decay=[...], backend=..., out=...)` (field
    values as keywords, no grid/seeds) is kept: it runs every combination as one launch and
    returns a ResultBatch, as before (engine.sweep).
    """
    valid_options, fields_ = option_names(), field_names()
    axes_kw = {k: v for k, v in options.items() if k in fields_ and k not in valid_options}
    if axes_kw:
        if grid is not None or seeds is not None or resume:
            raise GrokfastError(f"pass swept fields in grid= (got {', '.join(axes_kw)} as "
                                f"keywords beside grid/seeds/resume)")
        rest = {k: v for k, v in options.items() if k not in axes_kw}
        if set(rest) - {"backend"} or executor != "local":
            raise GrokfastError(f"the keyword form sweep(config, {', '.join(axes_kw)}=...) takes "
                                f"only backend, out and progress; use grid=/seeds= for the rest")
        from .engine import sweep as one_launch_sweep
        return one_launch_sweep(config, out=out, progress=progress, **rest, **axes_kw)
    for k in options:
        if k not in valid_options:
            raise GrokfastError(f"sweep() got an unknown option {k!r}"
                                f"{closest(k, valid_options + fields_)}; options: "
                                f"{', '.join(valid_options)} (swept fields go in grid=)")
    check_choice("executor", executor, ("local", "ray"))
    opts = SweepOptions(**options).validate()

    if resume:
        if out is None:
            raise GrokfastError("resume=True continues a sweep directory: pass out=DIR "
                                "(grokfast sweep --resume DIR)")
        sweep_dir = Path(out)
        config, grid, seeds, opts, max_models_per_launch, launch_memory = _resumed(
            sweep_dir, config, grid, seeds, options, max_models_per_launch, launch_memory)
    else:
        if not isinstance(config, Config):
            raise GrokfastError(f"sweep() needs a grokfast.Config, got {type(config).__name__}; "
                                f"use Config.preset('paper-real') or Config(...)")
        sweep_dir = Path(out) if out is not None else \
            Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        if (sweep_dir / PLAN_FILE).exists():
            raise GrokfastError(f"{sweep_dir} already holds a sweep ({PLAN_FILE}): finish it with "
                                f"`grokfast sweep --resume {sweep_dir}` (resume=True) or choose "
                                f"another --out directory")
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise GrokfastError(f"{sweep_dir} is not empty: choose a new --out directory")
    axes = check_grid(grid)
    seeds = check_seeds(seeds, config)
    launches = plan(config, axes, seeds, max_models_per_launch=max_models_per_launch,
                    launch_memory=launch_memory)
    runner = None
    if executor == "ray":  # before anything is written: a missing Ray fails cleanly
        from .ray_executor import RayExecutor
        runner = RayExecutor(address=ray_address, cpus_per_launch=cpus_per_launch)
    if resume:
        _check_same_plan(sweep_dir, launches)
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_plan(sweep_dir, config, axes, seeds, opts, launches, max_models_per_launch,
                   launch_memory)

    with _sweep_lock(sweep_dir):
        return _run_sweep(sweep_dir, launches, axes, opts, runner, progress, figures, phase_rules)


@contextmanager
def _sweep_lock(sweep_dir: Path):
    """An exclusive lock on DIR/sweep.lock while a sweep runs there (released when the process
    ends, even by SIGKILL): a second `grokfast sweep --resume DIR` at the same time is refused."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    f = open(sweep_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise GrokfastError(f"{sweep_dir} is being run by {holder}: wait for it to end (or stop "
                                f"it) before resuming") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def _run_sweep(sweep_dir: Path, launches: list, axes: dict, opts: SweepOptions, runner,
               progress: bool, figures: bool, phase_rules):
    table = _Table(sweep_dir, axes)
    done, pending = [], []
    for launch in launches:
        if launch_finished(sweep_dir / launch.name):
            table.set(launch, run_launch(launch, sweep_dir, opts))
            done.append(launch)
        else:
            pending.append(launch)
    table.write()
    status = dict(status="running", launches=len(launches), launches_done=len(done),
                  models=sum(l.n_models for l in launches), started=time.time(), wall_time=0.0)
    atomic_json(sweep_dir / STATUS_FILE, status)
    bar = _SweepBar(launches, done) if progress and pending else None
    stop = None
    if opts.handle_signals:
        from .engine import _StopRequest
        stop = _StopRequest()
    t0 = time.perf_counter()
    model_steps = 0

    def on_done(launch: Launch, rows: list) -> None:
        nonlocal model_steps
        table.set(launch, rows)
        model_steps += sum(r["steps_done"] or 0 for r in rows)
        if all(r["stop_reason"] not in RESUMABLE_STOPS for r in rows):
            status["launches_done"] += 1
        status["wall_time"] = time.perf_counter() - t0
        status["model_steps"] = model_steps
        atomic_json(sweep_dir / STATUS_FILE, status)
        if bar is not None:
            bar.launch_done(launch, rows)

    try:
        if stop is not None:
            stop.__enter__()
        if runner is not None and stop is not None:
            runner.should_stop = lambda: stop.requested
        if runner is None:
            runner = LocalExecutor(on_chunk=bar.chunk if bar is not None else None,
                                   should_stop=(lambda: stop.requested) if stop else None)
        runner.run(pending, sweep_dir, opts, on_done)
    finally:
        if stop is not None:
            stop.__exit__()
        if bar is not None:
            bar.close()
        complete = len(table.by_row) == sum(l.n_models for l in launches) and all(
            r["stop_reason"] not in RESUMABLE_STOPS for r in table.by_row.values())
        status.update(status="finished" if complete else "interrupted",
                      wall_time=time.perf_counter() - t0, model_steps=model_steps,
                      model_steps_per_s=model_steps / max(time.perf_counter() - t0, 1e-9),
                      errors=sum(r["error"] is not None for r in table.by_row.values()))
        atomic_json(sweep_dir / STATUS_FILE, status)
    result = SweepResult.load(sweep_dir)
    if figures:
        result.plot(rules=phase_rules)
    return result


def write_plan(sweep_dir: Path, base: Config, axes: dict, seeds: list, opts: SweepOptions,
               launches: Sequence[Launch], max_models_per_launch, launch_memory) -> None:
    rows = []
    for launch in launches:
        for j, (i, c) in enumerate(zip(launch.rows, launch.configs)):
            rows.append(dict(row=i, launch=launch.name, model=j,
                             values={a: _jsonable(getattr(c, a)) for a in axes}, seed=c.seed))
    rows.sort(key=lambda r: r["row"])
    atomic_json(sweep_dir / PLAN_FILE, dict(
        format=SWEEP_FORMAT, base=base.to_dict(), grid={k: [_jsonable(v) for v in vs]
                                                        for k, vs in axes.items()},
        seeds=seeds, options=dataclasses.asdict(opts), max_models_per_launch=max_models_per_launch,
        launch_memory=launch_memory,
        launches=[dict(index=l.index, name=l.name, rows=list(l.rows), n_models=l.n_models,
                       model_bytes=model_bytes(l.configs[0])) for l in launches],
        rows=rows))


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def read_plan(sweep_dir) -> dict:
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        raise GrokfastError(f"{sweep_dir} is not a sweep directory ({PLAN_FILE} is missing): pass a "
                            f"directory written by `grokfast sweep --out DIR`")
    plan_ = json.loads(path.read_text())
    if plan_.get("format") != SWEEP_FORMAT:
        raise GrokfastError(f"{path}: unknown format {plan_.get('format')!r} (expected "
                            f"{SWEEP_FORMAT})")
    return plan_


def _saved_grid(saved: dict) -> dict:
    return {k: [tuple(v) if k == "betas" else v for v in vs] for k, vs in saved["grid"].items()}


def _resumed(sweep_dir: Path, config, grid, seeds, options: dict, max_models, launch_memory):
    """The saved plan's inputs for resume, after checking that what the caller passed agrees."""
    saved = read_plan(sweep_dir)
    base = Config.from_dict(saved["base"])
    if config is not None and config != base:
        raise GrokfastError(f"{sweep_dir} was planned from another base config: resume without "
                            f"a config (and without --preset / --set)")
    saved_grid = _saved_grid(saved)
    if grid is not None and check_grid(grid) != saved_grid:
        raise GrokfastError(f"{sweep_dir} sweeps {saved_grid}: resume without grid (--grid)")
    if seeds is not None and [int(s) for s in seeds] != saved["seeds"]:
        raise GrokfastError(f"{sweep_dir} sweeps seeds {saved['seeds']}: resume without seeds")
    for name, value in (("max_models_per_launch", max_models), ("launch_memory", launch_memory)):
        if value is not None and value != saved[name]:
            raise GrokfastError(f"{sweep_dir} was planned with {name}={saved[name]}: resume "
                                f"without it")
    opts = dict(saved["options"])
    changeable = ("max_time", "checkpoint_every", "checkpoint_seconds", "threads",
                  "handle_signals", "curves")
    for k, v in options.items():
        if k in changeable:
            opts[k] = v
        elif v != opts[k] and not (k == "backend" and v == "auto"):
            raise GrokfastError(f"{sweep_dir} runs with {k}={opts[k]!r}; resuming with {k}={v!r} "
                                f"would not continue it bitwise: leave {k} out")
    if "max_time" not in options:
        opts["max_time"] = None
    return (base, saved_grid, saved["seeds"], SweepOptions(**opts).validate(),
            saved["max_models_per_launch"], saved["launch_memory"])


def _check_same_plan(sweep_dir: Path, launches: Sequence[Launch]) -> None:
    saved = read_plan(sweep_dir)["launches"]
    if [(l["name"], l["rows"]) for l in saved] != [(l.name, list(l.rows)) for l in launches]:
        raise GrokfastError(f"{sweep_dir}/{PLAN_FILE} packs its rows into other launches than this "
                            f"version of grokfast plans: finish it with the version that started "
                            f"it, or start a new sweep")


# ---------------------------------------------------------------------------------------- result
@dataclass
class SweepResult:
    """A sweep directory loaded: the plan, the table (results.csv) and the status.

    table: list of dicts, one per model of every finished launch, in plan order (COLUMNS after the
    swept fields; None where a cell is empty). axes: swept field → values. plan: list[Launch].
    """

    dir: Path
    base: Config
    axes: dict
    seeds: list
    plan: list
    table: list
    status: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @classmethod
    def load(cls, directory) -> "SweepResult":
        d = Path(directory)
        saved = read_plan(d)
        base = Config.from_dict(saved["base"])
        axes = _saved_grid(saved)
        configs = {}
        for r in saved["rows"]:
            values = {k: tuple(v) if k == "betas" else v for k, v in r["values"].items()}
            configs[r["row"]] = base.replace(**values, seed=r["seed"])
        launches = [Launch(l["index"], l["name"], tuple(l["rows"]),
                           tuple(configs[i] for i in l["rows"]), tuple(axes))
                    for l in saved["launches"]]
        status = json.loads((d / STATUS_FILE).read_text()) if (d / STATUS_FILE).is_file() else {}
        return cls(dir=d, base=base, axes=axes, seeds=saved["seeds"], plan=launches,
                   table=read_table(d / RESULTS_FILE, tuple(axes)), status=status,
                   options=saved["options"])

    @property
    def columns(self) -> tuple:
        return (*self.axes, *COLUMNS)

    @property
    def n_models(self) -> int:
        return sum(l.n_models for l in self.plan)

    @property
    def complete(self) -> bool:
        return self.status.get("status") == "finished"

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array (float with NaN for empty numeric cells)."""
        if name not in self.columns:
            raise GrokfastError(f"no column {name!r}{closest(name, self.columns)}")
        values = [r[name] for r in self.table]
        if name in _INT_COLUMNS or name in _FLOAT_COLUMNS:
            return np.array([np.nan if v is None else v for v in values], dtype=float)
        return np.array(values, dtype=object)

    def to_pandas(self):
        import pandas as pd
        return pd.read_csv(self.dir / RESULTS_FILE)

    def result(self, i: int):
        """The full Result (history, parameters) of table row i."""
        from .result import Result
        row = self.table[i]
        launch = next(l for l in self.plan if l.name == row["launch"])
        models = read_run(self.dir / launch.name)["models"]
        key = (tuple(row[a] for a in self.axes), row["seed"])
        j = next(j for j, c in enumerate(launch.configs)
                 if (tuple(getattr(c, a) for a in self.axes), c.seed) == key)
        return Result.load(self.dir / launch.name / models[j])

    def plot(self, rules=None) -> list[Path]:
        """Write the phase diagrams and time-to-grok figures into the sweep directory."""
        from .phases import plot_sweep
        try:
            return plot_sweep(self, rules=rules)
        except Exception as e:  # a figure must never lose a sweep
            (self.dir / "figures.error.txt").write_text(f"could not draw the figures: {e!r}\n")
            return []

    def summary(self, rules=None) -> str:
        from .phases import summary_lines
        return "\n".join(summary_lines(self, rules=rules))
