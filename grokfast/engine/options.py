"""The options of one run call (grokfast.train / grokfast.engine.run), validated in one frozen object."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from grokfast.backends.base import BACKENDS
from grokfast.config import Config
from grokfast.errors import GrokfastError, check_choice, closest
from grokfast.tracking import require_tensorboard, resolve_loggers

from .resume import open_checkpoint, saved_choices

STOP_AT = (None, "none", "grok")
DEFAULT_CHECKPOINT_SECONDS = 300.0
# the first checkpoint of a call comes after at most this many seconds (then every
# checkpoint_seconds), so that a run killed early loses at most this much work
FIRST_CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class RunOptions:
    """Everything but the configs that one run call takes; see grokfast.engine.run for each one.

    Built as given (`check` validates it), then `resolved` against the configs: the checkpoint
    loaded and its saved choices (backend, stop_at, stop_patience, layout) filled in, the defaults
    applied, the profile window parsed.
    """

    backend: str = "auto"
    progress: bool = False
    handle_signals: bool = False
    chunk_steps: Optional[int] = None
    observers: Sequence = ()
    out: Any = None
    single: Optional[bool] = None
    resume: Any = None                       # a checkpoint dict (or its run directory until resolved)
    checkpoint_every: Optional[int] = None
    checkpoint_seconds: Optional[float] = None
    stop_at: Optional[str] = None
    stop_patience: Optional[int] = None
    max_steps: Optional[int] = None
    max_time: Optional[float] = None
    profile_steps: Any = None
    on_chunk: Optional[Callable] = None
    curves: bool = True
    tensorboard: Any = False                 # True: grokfast.tracking.tensorboard; or a Logger
    loggers: Sequence = ()                   # more trackers (grokfast.tracking.Logger)
    window: Optional[tuple] = None           # profile_steps as (A, B), set by resolved

    @classmethod
    def of(cls, caller: str, options: dict, internal: Sequence[str] = ()) -> "RunOptions":
        """RunOptions from a caller's keyword arguments; GrokfastError naming an unknown one (and
        the closest option) instead of a TypeError. `internal`: fields this caller sets itself."""
        valid = [f.name for f in dataclasses.fields(cls) if f.name != "window"
                 and f.name not in internal]
        for name in options:
            if name not in valid:
                raise GrokfastError(f"{caller}() has no option {name!r}{closest(name, valid)}; "
                                    f"its options: {', '.join(valid)}")
        return cls(**options)

    def check(self, steps: int) -> Optional[tuple]:
        """GrokfastError naming the first bad option; returns the profile window (A, B) or None."""
        check_choice("backend", self.backend, BACKENDS)
        check_choice("stop_at", self.stop_at, STOP_AT)
        _positive("chunk_steps", self.chunk_steps)
        _positive("stop_patience", self.stop_patience)
        _positive("max_time", self.max_time, float)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("checkpoint_seconds", self.checkpoint_seconds, float)
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise GrokfastError(f"max_steps={self.max_steps!r} must be an integer ≥ 0")
        if self.out is None and (self.checkpoint_every or self.checkpoint_seconds):
            raise GrokfastError("checkpoints need a run directory: pass out=DIR (--out DIR)")
        if self.tensorboard is True:
            require_tensorboard()  # a missing tensorboardX fails before the directory is touched
        if self.out is None and self.resume is None and (self.tensorboard or self.loggers):
            raise GrokfastError("tensorboard / loggers write beside a run directory: pass out=DIR "
                                "(--out DIR)")
        return _profile_window(self.profile_steps, steps)

    def resolved(self, configs: Sequence[Config]) -> "RunOptions":
        """The options a launch of `configs` runs with (validated, resume loaded, defaults set)."""
        window = self.check(configs[0].steps)
        out, resume, backend = self.out, self.resume, self.backend
        stop_at, stop_patience, single = self.stop_at, self.stop_patience, self.single
        if resume is not None:
            resume, out = open_checkpoint(resume, out)
            backend, stop_at, stop_patience, single = saved_choices(resume, configs, backend,
                                                                    stop_at, stop_patience)
        checkpoint_seconds = self.checkpoint_seconds
        if out is not None and self.checkpoint_every is None and checkpoint_seconds is None:
            checkpoint_seconds = DEFAULT_CHECKPOINT_SECONDS
        return dataclasses.replace(
            self, out=out, resume=resume, backend=backend,
            stop_at=None if stop_at == "none" else stop_at, stop_patience=int(stop_patience or 3),
            single=len(configs) == 1 if single is None else single,
            checkpoint_seconds=checkpoint_seconds, window=window, tensorboard=False,
            loggers=resolve_loggers(self.tensorboard, self.loggers))


def _positive(name: str, v, kind=int) -> None:
    if v is not None and (not isinstance(v, numbers.Integral if kind is int else numbers.Real)
                          or isinstance(v, bool) or not math.isfinite(v) or v <= 0):
        raise GrokfastError(f"{name}={v!r} must be a positive {'integer' if kind is int else 'number'}")


def _profile_window(profile_steps, steps: int) -> Optional[tuple]:
    if profile_steps is None:
        return None
    try:
        a, b = (int(x) for x in profile_steps)
    except (TypeError, ValueError):
        raise GrokfastError(f"profile_steps={profile_steps!r}: give two steps (A, B), A < B") from None
    if not 0 <= a < b:
        raise GrokfastError(f"profile_steps=({a}, {b}): need 0 ≤ A < B (steps A … B−1 are captured)")
    if a >= steps:
        raise GrokfastError(f"profile_steps=({a}, {b}) starts after the run's {steps} steps")
    return a, b
