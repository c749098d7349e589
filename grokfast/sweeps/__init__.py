"""`grokfast sweep`: every combination of a grid of config values × seeds, packed into launches.

A sweep is a *plan* of launches and an *executor* that runs them:

    launches = plan(base, grid, seeds)                  # list[Launch], in plan order
    rows = run_launch(launches[0], sweep_dir, options)  # one launch: train, resume or read back
    LocalExecutor().run(launches, sweep_dir, options, on_done)   # one after another, here
    # grokfast.sweeps.ray.RayExecutor: the same launches, anywhere in a Ray cluster

A launch is one `engine.run` of a batch of models that share `grokfast.backends.base.SHARED_FIELDS` (the data, the
shapes and the loop); it has its own run directory, checkpoints and resume (grokfast.store.history).
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
    DIR/phase_<a>__<b>.png, DIR/time_to_grok_<a>.png   figures (phases.py)

`sweep(..., resume=True)` (`grokfast sweep --resume DIR`) keeps finished launches, resumes an
interrupted one from its checkpoint (bitwise) and runs the rest.

The parts, bottom up: grid (values from Python or text) → plan (Launch, the memory cap) →
options (SweepOptions) → table (results.csv) → launch (run_launch, the unit of work) → local and
ray (executors) → files (plan.json, status.json, the lock) → result (SweepResult), phases (phase
rules and figures) → api (sweep()).
"""
from .api import keyword_sweep, sweep
from .grid import check_grid, check_seeds, parse_grid_arg, parse_values
from .launch import failed_rows, launch_finished, lone_chunk, run_launch
from .local import LocalExecutor
from .options import SweepOptions
from .plan import Launch, launch_capacity, model_bytes, plan
from .result import SweepResult
from .table import COLUMNS, RESUMABLE_STOPS, read_table, table_csv

__all__ = ["sweep", "keyword_sweep", "plan", "Launch", "model_bytes", "launch_capacity",
           "run_launch", "failed_rows", "launch_finished", "lone_chunk", "LocalExecutor",
           "SweepOptions", "SweepResult", "COLUMNS", "RESUMABLE_STOPS", "read_table", "table_csv",
           "check_grid", "check_seeds", "parse_grid_arg", "parse_values"]
