"""Resuming a launch, decided in one place: which checkpoint, which configs, which saved choices.

`grokfast.train(resume=DIR)`, `engine.run(resume=...)` and `grokfast train --resume DIR` all come
here, with the run directory held (grokfast.store.ownership). The checkpoint is the newest one
that verifies with its history (grokfast.store.recovery); a run killed before its first
checkpoint starts over in place. It is read once: the CLI reads it to print where it resumes and
hands the loaded dict on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.inputs import check_seeds
from grokfast.store.checkpoint import check_resumable
from grokfast.store.recovery import resume_point, start_over, verified_checkpoint

log = logging.getLogger("grokfast")


def resume_dir(resume, out) -> Path:
    """The run directory a resume writes into: `resume` itself (out, if given, must be the same),
    or `out` for a checkpoint dict already read from it."""
    if isinstance(resume, dict):
        if out is None:
            raise GrokfastError("resume needs its run directory: pass out=DIR")
        return Path(out)
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        raise GrokfastError(f"resume={str(resume)!r} continues that directory; out="
                            f"{str(out)!r} must be the same directory or left out")
    return Path(resume)


def resume_plan(resume, out: Path, config: Optional[Config], seeds) -> tuple:
    """(configs, single, checkpoint or None) of a resume of `out` (resume: its directory or its
    checkpoint already read); None: the run had no checkpoint and starts over in place."""
    if isinstance(resume, dict):
        return (*resume_configs(resume, config, seeds), resume)
    ckpt, saved, single = resume_point(out)
    if ckpt is None:
        configs = restart_configs(saved, single, config, seeds)
        log.warning(start_over(out))
        return configs, single, None
    return (*resume_configs(ckpt, config, seeds), ckpt)


def restart_configs(saved: list, single: bool, config: Optional[Config], seeds) -> list:
    """The configs of a run started over in place: the saved ones, or `config` per saved seed."""
    if seeds is not None and check_seeds(seeds) != [c.seed for c in saved]:
        raise GrokfastError(f"{'one model' if single else f'seeds {[c.seed for c in saved]}'} "
                            f"ran there, not seeds {list(seeds)}: leave seeds out")
    if config is None:
        return saved
    if not isinstance(config, Config):
        raise GrokfastError(f"train() needs a grokfast.Config or None, got {type(config).__name__}")
    return [config.replace(seed=c.seed) for c in saved]


def open_checkpoint(resume, out) -> tuple[dict, Path]:
    """(checkpoint, run directory) for `resume`: a run directory (its newest verified checkpoint;
    out, if given, must be the same directory), or a checkpoint dict already read from `out`."""
    d = resume_dir(resume, out)
    return (resume if isinstance(resume, dict) else verified_checkpoint(d)), d


def resume_configs(ckpt: dict, config: Optional[Config], seeds) -> tuple[list, bool]:
    """The configs a resume runs, and whether the run is one model saved in its directory itself:
    the saved configs, or `config` (per saved seed) when it matches them (steps may grow)."""
    saved = [Config.from_dict(d) for d in ckpt["configs"]]
    single = ckpt["layout"] == "single"
    if seeds is not None:
        seeds = check_seeds(seeds)
        if single or seeds != [c.seed for c in saved]:
            have = "one model" if single else f"seeds {[c.seed for c in saved]}"
            raise GrokfastError(f"the checkpoint holds {have}, not seeds {seeds}: resume with the "
                                f"same seeds (or leave seeds out)")
    if config is None:
        return saved, single
    if not isinstance(config, Config):
        raise GrokfastError(f"train() needs a grokfast.Config or None, got {type(config).__name__}")
    configs = [config] if single else [config.replace(seed=c.seed) for c in saved]
    check_resumable(ckpt, configs)
    return configs, single


def saved_choices(ckpt: dict, configs: Sequence[Config], backend: str, stop_at, stop_patience):
    """(backend, stop_at, stop_patience, single) a resumed launch runs with: the checkpoint's,
    unless the caller asked for the same (a different backend would not continue bitwise)."""
    if backend == "auto":
        backend = ckpt["backend"]
    elif backend != ckpt["backend"]:
        raise GrokfastError(f"the checkpoint was written by backend {ckpt['backend']!r}; "
                            f"resuming on {backend!r} would not continue it bitwise: resume "
                            f"with backend={ckpt['backend']!r} (or 'auto')")
    check_resumable(ckpt, configs)
    stop_at = ckpt["stop_at"] if stop_at is None else stop_at
    return backend, stop_at, stop_patience or ckpt["stop_patience"], ckpt["layout"] == "single"
