"""Trackers beside the run directory: a small logger protocol and its TensorBoard adapter.

A logger sees a launch through four calls from the run directory's sink (grokfast.sink), in this
order: on_start(run) once, before the first event; on_event(record) for every events.jsonl record
(started, memorized, grokked, checkpoint, …, finished); on_chunk(rows, n_valid) for every chunk of
history rows as it streams; on_finish(results, status) once at the end (results None when a second
Ctrl-C broke in). Another tracker is a subclass of `Logger` overriding what it needs, passed as
`grokfast.train(..., out=DIR, loggers=[MyLogger()])`. The TensorBoard one:
grokfast.tracking.tensorboard (`tensorboard=True`, `--tensorboard`); grokfast.sweeps.export
writes its files after the fact.
"""
from __future__ import annotations

from typing import Sequence

from grokfast.errors import GrokfastError

from .base import Logger, RunInfo
from .event_file import protos
from .tensorboard import TensorBoardLogger


def require_tensorboard() -> None:
    """GrokfastError saying what to install when tensorboardX is missing."""
    protos()


def resolve_loggers(tensorboard, loggers: Sequence) -> tuple:
    """The loggers of a run call: `loggers`, plus the TensorBoard one when tensorboard is True (or
    tensorboard itself when it is a Logger)."""
    out = []
    for lg in (*loggers, *([tensorboard] if tensorboard not in (None, False, True) else [])):
        if not all(callable(getattr(lg, m, None)) for m in ("on_start", "on_event", "on_chunk",
                                                             "on_finish")):
            raise GrokfastError(f"{lg!r} is not a logger: it needs on_start, on_event, on_chunk and "
                                f"on_finish (subclass grokfast.tracking.Logger)")
        out.append(lg)
    if tensorboard is True:
        out.append(TensorBoardLogger())
    return tuple(out)


__all__ = ["Logger", "RunInfo", "TensorBoardLogger", "require_tensorboard", "resolve_loggers"]
