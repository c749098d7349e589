"""`grokfast.sweep`: plan a grid × seeds into launches, run them with an executor, keep the table.

The one entry point over the parts of this package (see grokfast.sweeps); `keyword_sweep` is the
older keyword form, kept as a thin wrapper.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Optional

from grokfast.backends.base import SHARED_FIELDS
from grokfast.config import Config, field_names
from grokfast.engine import run
from grokfast.engine.signals import StopRequest
from grokfast.errors import GrokfastError, check_choice, closest
from grokfast.store.history import atomic_json
from grokfast.store.ownership import DirLock, claim_new, os_errors
from grokfast.store.result import ResultBatch

from .files import LOCK_FILE, STATUS_FILE, check_same_plan, resumed, write_plan
from .grid import check_grid, check_seeds
from .launch import launch_finished, run_launch
from .local import LocalExecutor
from .options import SweepOptions, option_names
from .plan import Launch, plan
from .progress import SweepBar
from .result import SweepResult
from .table import RESUMABLE_STOPS, Table


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
    threads, handle_signals, curves, tensorboard). executor: "local" (one launch after another here) or "ray"
    (grokfast.sweeps.ray.RayExecutor(address=ray_address, cpus_per_launch=...)).
    max_models_per_launch / launch_memory (bytes): the cap on models per launch (launch_capacity).
    resume: continue the sweep in out (config, grid and seeds may be left out: the saved ones).
    figures: write the phase diagrams and time-to-grok plots (grokfast.sweeps.phases, with phase_rules).

    The older form `sweep(config, seed=range(4), weight_decay=[...], backend=..., out=...)` (field
    values as keywords, no grid/seeds) is kept: it runs every combination as one launch and
    returns a ResultBatch, as before (keyword_sweep).
    """
    if set(options) & (set(field_names()) - set(option_names())):
        if grid is not None or seeds is not None or resume or executor != "local":
            raise GrokfastError("pass swept fields in grid= (field values as keywords are the "
                                "older one-launch form, without grid, seeds, resume or executor)")
        return keyword_sweep(config, out=out, progress=progress, **options)
    valid_options = option_names()
    for k in options:
        if k not in valid_options:
            raise GrokfastError(f"sweep() got an unknown option {k!r}"
                                f"{closest(k, valid_options + field_names())}; options: "
                                f"{', '.join(valid_options)} (swept fields go in grid=)")
    check_choice("executor", executor, ("local", "ray"))
    opts = SweepOptions(**options).validate()

    if resume:
        if out is None:
            raise GrokfastError("resume=True continues a sweep directory: pass out=DIR "
                                "(grokfast sweep --resume DIR)")
        sweep_dir = Path(out)
        config, grid, seeds, opts, max_models_per_launch, launch_memory = resumed(
            sweep_dir, config, grid, seeds, options, max_models_per_launch, launch_memory)
    else:
        if not isinstance(config, Config):
            raise GrokfastError(f"sweep() needs a grokfast.Config, got {type(config).__name__}; "
                                f"use Config.preset('paper-real') or Config(...)")
        sweep_dir = Path(out) if out is not None else \
            Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        claim_new(sweep_dir, "sweep")  # refused before anything is written (again once locked)
    axes = check_grid(grid)
    seeds = check_seeds(seeds, config)
    launches = plan(config, axes, seeds, max_models_per_launch=max_models_per_launch,
                    launch_memory=launch_memory)
    runner = None
    if executor == "ray":  # before anything is written: a missing Ray fails cleanly
        from .ray import RayExecutor
        runner = RayExecutor(address=ray_address, cpus_per_launch=cpus_per_launch)
    with os_errors(sweep_dir), DirLock(sweep_dir, LOCK_FILE, "sweep", create=not resume):
        if resume:
            check_same_plan(sweep_dir, launches)
        else:
            claim_new(sweep_dir, "sweep")
            write_plan(sweep_dir, config, axes, seeds, opts, launches, max_models_per_launch,
                       launch_memory)
        return _run_sweep(sweep_dir, launches, axes, opts, runner, progress, figures, phase_rules)




def _run_sweep(sweep_dir: Path, launches: list, axes: dict, opts: SweepOptions, runner,
               progress: bool, figures: bool, phase_rules):
    table = Table(sweep_dir, axes)
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
    bar = SweepBar(launches, done) if progress and pending else None
    stop = None
    if opts.handle_signals:
        stop = StopRequest()
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
        try:
            atomic_json(sweep_dir / STATUS_FILE, status)
        except OSError:  # disk full: the stale "running" reads as interrupted (no lock held)
            pass
    result = SweepResult.load(sweep_dir)
    if figures:
        result.plot(rules=phase_rules)
    return result


def keyword_sweep(config: Config, *, backend: str = "auto", out=None, progress: bool = False,
                  **axes) -> ResultBatch:
    """The older form of sweep(): every combination of the given field values as one launch.

    Example: sweep(cfg, seed=range(4), weight_decay=[1e-4, 3e-4], lr=[0.5, 1.0]) → 16 models in
    itertools.product order (first axis slowest). Fields in SHARED_FIELDS cannot vary (one launch).
    out: run directory, streamed and saved as train's (model_000/, model_001/, …).
    """
    valid = field_names()
    for name in axes:
        if name not in valid:
            raise GrokfastError(f"the keyword form sweep(config, {name}=...) takes only config "
                                f"fields, backend, out and progress{closest(name, valid)}; use "
                                f"grid= / seeds= for the rest")
        if name in SHARED_FIELDS:
            raise GrokfastError(f"{name!r} changes shapes or data and cannot vary within one launch; "
                                f"call sweep once per {name}, or pass it in grid=")
    names = list(axes)
    values = [list(v) if not isinstance(v, (str, bytes)) else [v] for v in axes.values()]
    configs = [config.replace(**dict(zip(names, combo))) for combo in itertools.product(*values)]
    if not configs:
        raise GrokfastError("sweep has no combination: every axis needs at least one value")
    return ResultBatch(run(configs, backend=backend, progress=progress, out=out, single=False))
