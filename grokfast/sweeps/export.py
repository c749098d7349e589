"""`grokfast export tensorboard DIR`: the TensorBoard files of a finished run or sweep, after the fact.

The run's directory is replayed through the same TensorBoardLogger as a live `--tensorboard` run
(every history row, the milestones, the config, then probe, curves and HParams), so the files are
byte for byte those the live run writes. A sweep: every launch that is not running, its rows named
and their HParams taken from results.csv, and the sweep's experiment.

Export writes under the one rule of every command's output (grokfast.store.output.command_output):
it holds the run's lock (a sweep's and each launch's), so it refuses while a writer runs; it
loads and verifies every model's files before it replaces anything; each event file is replaced
by rename only once complete; every TensorBoard run path read back from plan.json passes
check_name (it stays inside SWEEP/tensorboard).
"""
from __future__ import annotations

from pathlib import Path

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.store.history import RUN_FILE, read_run
from grokfast.store.output import command_output
from grokfast.store.ownership import RUN_LOCK, SWEEP_LOCK, DirLock, check_name
from grokfast.store.result import Result
from grokfast.tracking import RunInfo
from grokfast.tracking.tensorboard import (
    TB_DIR,
    TensorBoardLogger,
    hparam_value,
    row_run_name,
    run_dirs,
    session_of_row,
    write_experiment,
)

from .files import PLAN_FILE, read_plan
from .table import RESULTS_FILE, read_table


def _replay(launch: Path, logger: TensorBoardLogger) -> None:
    run = read_run(launch)
    if run.get("status") == "running":
        raise GrokfastError(f"{launch} is running (or was killed): resume it with `grokfast train "
                            f"--resume {launch} --tensorboard`, which writes its TensorBoard files")
    models = tuple(run["models"])
    results = [Result.load(launch / m) for m in models]  # every file verified before any write
    configs = tuple(Config.from_json((launch / m / "config.json").read_text()) for m in models)
    logger.on_start(RunInfo(launch, configs, models, rows=None))
    logger.on_finish(results, run["status"])


def export_run(directory) -> list[Path]:
    """Write DIR/tensorboard/ for the run (one model or a batch) in DIR; returns the run dirs."""
    d = Path(directory)
    with command_output(d, "export tensorboard", claim=False, create=False,
                        lock=RUN_LOCK):
        models = read_run(d)["models"]
        _replay(d, TensorBoardLogger(staged=True))
    return run_dirs(d, models)


def export_sweep(directory) -> list[Path]:
    """Write SWEEP/tensorboard/ (one run per plan row of every launch not running, with its HParams
    session from results.csv, and the experiment); returns the run directories written."""
    d = Path(directory)
    with command_output(d, "export tensorboard", claim=False, create=False,
                        lock=SWEEP_LOCK):
        return _export_sweep(d)


def _export_sweep(d: Path) -> list[Path]:
    plan = read_plan(d)
    axes = list(plan["grid"])
    table = read_table(d / RESULTS_FILE, axes) if (d / RESULTS_FILE).is_file() else []
    by_launch: dict = {}
    for row in table:
        by_launch.setdefault(row["launch"], []).append(row)
    rows = plan["rows"]
    example = {a: hparam_value(v) for a, v in rows[0]["values"].items()} | {"seed": rows[0]["seed"]}
    written = []
    for launch in plan["launches"]:
        ld = d / launch["name"]
        mine = [r for r in rows if r["launch"] == launch["name"]]
        table_rows = by_launch.get(launch["name"], [])
        if not (ld / RUN_FILE).is_file() or read_run(ld).get("status") == "running" \
                or len(table_rows) != len(mine):
            continue
        runs = [d / TB_DIR / check_name(row_run_name(r["values"], r["seed"]), "path",
                                        d / PLAN_FILE) for r in mine]
        session = (lambda i, _r, t=table_rows: session_of_row(t[i], axes))
        with DirLock(ld, RUN_LOCK, what="launch"):
            _replay(ld, TensorBoardLogger(runs, session=session, staged=True))
        written += runs
    if written:
        write_experiment(d, example)
    return written


def export_tensorboard(directory) -> list[Path]:
    """export_sweep for a sweep directory (plan.json), else export_run (run.json)."""
    d = Path(directory)
    if (d / "plan.json").is_file():
        return export_sweep(d)
    if (d / RUN_FILE).is_file():
        return export_run(d)
    raise GrokfastError(f"{d} is neither a run directory ({RUN_FILE}) nor a sweep directory "
                        f"(plan.json): pass a directory written by `grokfast train --out DIR` or "
                        f"`grokfast sweep --out DIR`")
