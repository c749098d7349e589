"""The options every launch of a sweep runs with (picklable, the same for every launch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from grokfast.engine import RunOptions
from grokfast.errors import GrokfastError

# the RunOptions fields a sweep hands each launch as they are
RUN_FIELDS = ("backend", "stop_at", "stop_patience", "max_time", "checkpoint_every",
              "checkpoint_seconds", "chunk_steps", "handle_signals", "curves")


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
    later with grokfast.store.result.plot_curves(SweepResult.result(i), path)).
    tensorboard: every plan row as a TensorBoard run in DIR/tensorboard/, live, with its HParams
    session (grokfast.tracking.tensorboard; needs tensorboardX).
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
    tensorboard: bool = False

    def validate(self) -> "SweepOptions":
        """GrokfastError naming the first bad option: the fields shared with grokfast.train by
        RunOptions' own checks, threads here."""
        RunOptions(out=".", **self.run_options()).check(steps=1)
        if self.threads is not None and (not isinstance(self.threads, int)
                                         or isinstance(self.threads, bool) or self.threads < 1):
            raise GrokfastError(f"threads={self.threads!r} must be a positive integer")
        return self

    def run_options(self) -> dict:
        """The RunOptions keywords (RUN_FIELDS) every launch runs with."""
        return {name: getattr(self, name) for name in RUN_FIELDS}


def option_names() -> tuple:
    return tuple(f.name for f in dataclasses.fields(SweepOptions))
