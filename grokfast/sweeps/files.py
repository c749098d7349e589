"""The sweep directory's own files: plan.json (written once, checked on resume, its launch names
validated) and status.json; the sweep.lock a sweep holds is grokfast.store.ownership's DirLock."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.store.history import atomic_json
from grokfast.store.ownership import SWEEP_LOCK, check_name, check_names, read_json

from .grid import check_grid
from .options import SweepOptions
from .plan import Launch, model_bytes

PLAN_FILE = "plan.json"
STATUS_FILE = "status.json"
LOCK_FILE = SWEEP_LOCK
SWEEP_FORMAT = "grokfast-sweep/1"


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
    plan_ = read_json(path)
    if plan_.get("format") != SWEEP_FORMAT:
        raise GrokfastError(f"{path}: unknown format {plan_.get('format')!r} (expected "
                            f"{SWEEP_FORMAT})")
    try:
        check_names([l["name"] for l in plan_["launches"]], "launch", str(path))
        for k in ("base", "grid", "seeds", "options", "rows"):
            plan_[k]
        _check_axes(plan_, path)
    except (KeyError, TypeError, AttributeError):
        raise GrokfastError(f"{path} is damaged (a field is missing): restore it from a copy, or "
                            f"start the sweep again elsewhere") from None
    return plan_


def _check_axes(plan_: dict, path: Path) -> None:
    """The swept fields of plan.json (its grid and every row's values) are config fields, the
    same in every row, and every row names one of the plan's launches."""
    fields = {f.name for f in dataclasses.fields(Config)}
    axes = list(plan_["grid"])
    for a in axes:
        check_name(a, "field", path)
        if a not in fields:
            raise GrokfastError(f"{path}: its grid sweeps {a!r}, not a config field: restore the "
                                f"file, or start the sweep again elsewhere")
    launches = {l["name"] for l in plan_["launches"]}
    for r in plan_["rows"]:
        keys = list(r["values"])
        for k in keys:
            check_name(k, "field", path)
        if sorted(keys) != sorted(axes) or r["launch"] not in launches:
            raise GrokfastError(f"{path}: row {r.get('row')!r} sweeps {keys} in launch "
                                f"{r['launch']!r}, not the grid's fields {axes} in one of its "
                                f"launches: restore the file, or start the sweep again elsewhere")


def saved_grid(saved: dict) -> dict:
    return {k: [tuple(v) if k == "betas" else v for v in vs] for k, vs in saved["grid"].items()}


def resumed(sweep_dir: Path, config, grid, seeds, options: dict, max_models, launch_memory):
    """The saved plan's inputs for resume, after checking that what the caller passed agrees."""
    saved = read_plan(sweep_dir)
    base = Config.from_dict(saved["base"])
    if config is not None and config != base:
        raise GrokfastError(f"{sweep_dir} was planned from another base config: resume without "
                            f"a config (and without --preset / --set)")
    axes = saved_grid(saved)
    if grid is not None and check_grid(grid) != axes:
        raise GrokfastError(f"{sweep_dir} sweeps {axes}: resume without grid (--grid)")
    if seeds is not None and [int(s) for s in seeds] != saved["seeds"]:
        raise GrokfastError(f"{sweep_dir} sweeps seeds {saved['seeds']}: resume without seeds")
    for name, value in (("max_models_per_launch", max_models), ("launch_memory", launch_memory)):
        if value is not None and value != saved[name]:
            raise GrokfastError(f"{sweep_dir} was planned with {name}={saved[name]}: resume "
                                f"without it")
    opts = dict(saved["options"])
    changeable = ("max_time", "checkpoint_every", "checkpoint_seconds", "threads",
                  "handle_signals", "curves", "tensorboard")
    for k, v in options.items():
        if k in changeable:
            opts[k] = v
        elif v != opts[k] and not (k == "backend" and v == "auto"):
            raise GrokfastError(f"{sweep_dir} runs with {k}={opts[k]!r}; resuming with {k}={v!r} "
                                f"would not continue it bitwise: leave {k} out")
    if "max_time" not in options:
        opts["max_time"] = None
    return (base, axes, saved["seeds"], SweepOptions(**opts).validate(),
            saved["max_models_per_launch"], saved["launch_memory"])


def check_same_plan(sweep_dir: Path, launches: Sequence[Launch]) -> None:
    saved = read_plan(sweep_dir)["launches"]
    if [(l["name"], l["rows"]) for l in saved] != [(l.name, list(l.rows)) for l in launches]:
        raise GrokfastError(f"{sweep_dir}/{PLAN_FILE} packs its rows into other launches than this "
                            f"version of grokfast plans: finish it with the version that started "
                            f"it, or start a new sweep")
