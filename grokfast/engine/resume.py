"""Resuming a launch, decided in one place: which checkpoint, which configs, which saved choices.

`grokfast.train(resume=DIR)`, `engine.run(resume=...)` and `grokfast train --resume DIR` all come
here. A checkpoint is read (and its hash checked) once: the CLI loads it to print where it resumes
and hands the loaded dict on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.store.checkpoint import check_resumable, load_checkpoint


def open_checkpoint(resume, out) -> tuple[dict, Path]:
    """(checkpoint, run directory) for `resume`: a run directory (out, if given, must be the same
    directory), or a checkpoint dict already loaded from `out`."""
    if isinstance(resume, dict):
        if out is None:
            raise GrokfastError("resume needs its run directory: pass out=DIR")
        return resume, Path(out)
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        raise GrokfastError(f"resume={str(resume)!r} continues that directory; out="
                            f"{str(out)!r} must be the same directory or left out")
    return load_checkpoint(Path(resume)), Path(resume)


def resume_configs(ckpt: dict, config: Optional[Config], seeds) -> tuple[list, bool]:
    """The configs a resume runs, and whether the run is one model saved in its directory itself:
    the saved configs, or `config` (per saved seed) when it matches them (steps may grow)."""
    saved = [Config.from_dict(d) for d in ckpt["configs"]]
    single = ckpt["layout"] == "single"
    if seeds is not None:
        seeds = [int(s) for s in seeds]
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
