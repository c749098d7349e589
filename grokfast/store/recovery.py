"""Where a `--resume` of a run directory starts: its newest verified checkpoint, or over again.

A run killed before its first checkpoint left its configs (config.json per model) and run.json
but nothing to continue from: `resume_point` then returns no checkpoint and the saved configs,
and the caller starts the run over in place (`start_over`), saying so. Everything is read
with the directory's lock held (grokfast.ownership), so no other writer changes it meanwhile.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from grokfast.config import Config
from grokfast.errors import GrokfastError

from .checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint
from .history import RUN_FILE, atomic_write, read_run, sync_dir
from .integrity import chunk_problems
from .ownership import clear_run, read_json


def resume_point(launch) -> tuple[Optional[dict], list, bool]:
    """(verified checkpoint or None, saved configs, single) of the run in `launch`."""
    d = Path(launch)
    if not d.is_dir():
        raise GrokfastError(f"{d} does not exist or is not a directory: --resume needs the run "
                            f"directory of an earlier `grokfast train --out DIR`")
    if (d / "checkpoint.pt").is_file() or (d / "checkpoint.prev.pt").is_file():
        ckpt = verified_checkpoint(d)
        return ckpt, [Config.from_dict(c) for c in ckpt["configs"]], ckpt["layout"] == "single"
    if not (d / RUN_FILE).is_file():
        raise GrokfastError(f"{d} has no checkpoint.pt and no run.json: it is not a run directory "
                            f"written by `grokfast train --out DIR`; start a new run instead of "
                            f"resuming")
    run = read_run(d)
    configs = []
    for m in run["models"]:
        path = d / m / "config.json"
        if not path.is_file():
            raise GrokfastError(f"{d} was killed before it saved its configs ({path} is missing) "
                                f"and has no checkpoint: start a new run in a new directory")
        configs.append(Config.from_dict(read_json(path)))
    return None, configs, run.get("layout") == "single"


def start_over(launch) -> str:
    """Clear what the run wrote in `launch` (its own names only); the message to show."""
    clear_run(launch)
    return (f"{launch} has no checkpoint (the run was stopped before its first one): starting "
            f"it over in place from step 0")


def verified_checkpoint(launch) -> dict:
    """The newest checkpoint of `launch` whose own checksum and history chunks all verify:
    checkpoint.pt, else checkpoint.prev.pt (copied over checkpoint.pt, so that the next save
    keeps it as the previous one); else GrokfastError naming the damaged file(s)."""
    d = Path(launch)
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        if name == PREVIOUS and not (d / PREVIOUS).is_file():
            break
        try:
            ckpt = load_checkpoint(d, name)
        except GrokfastError as e:
            if name == CHECKPOINT and not (d / PREVIOUS).is_file():
                raise
            problems.append(f"{name}: {e}")
            continue
        bad = chunk_problems(d, ckpt.get("chunks") or {}, d / name)
        if not bad:
            if name == PREVIOUS:
                _promote(d / PREVIOUS, d / CHECKPOINT)
                ckpt["note"] = (f"resuming from the previous checkpoint (step {ckpt['step']}): "
                                f"{'; '.join(problems)}")
                logging.getLogger("grokfast").warning(ckpt["note"])
            return ckpt
        problems.append(f"{name} (step {ckpt['step']}) stands on damaged history: "
                        f"{', '.join(bad)}")
    raise GrokfastError(f"cannot resume {d}: {'; '.join(problems)}. Restore the damaged file(s) "
                        f"from a copy, or start the run again in a new directory")


def _promote(prev: Path, path: Path) -> None:
    with open(prev, "rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    sync_dir(path.parent)
