"""The logger protocol (Logger) and what a logger is told of its launch (RunInfo)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from grokfast.store.history import LazyHistory


@dataclass(frozen=True)
class RunInfo:
    """The launch a logger follows: its run directory, configs and model directories (relative to
    `launch`, "." for one model) and `rows`, the history rows already recorded when this call
    starts (a resume's checkpoint rows, 0 for a fresh run; None: every complete chunk on disk)."""

    launch: Path
    configs: tuple
    models: tuple
    rows: Optional[int] = 0

    def history(self, i: int) -> Mapping:
        """Model i's history rows [0, rows) as name → float64 array (grokfast.history.LazyHistory)."""
        return LazyHistory(self.launch, i, rows=self.rows)


class Logger:
    """The logger protocol; every call is a no-op here (override the ones a tracker needs)."""

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_event(self, record: dict) -> None:
        pass

    def on_chunk(self, rows: dict, n_valid: np.ndarray) -> None:
        """rows: name → [n_models, n] float64 for the next n history rows; model i recorded its
        first n_valid[i] of them (none after it stopped or diverged)."""

    def on_finish(self, results: Optional[Sequence], status: str) -> None:
        """results: one grokfast.Result per model (None after a hard stop); status "finished" or
        "interrupted"."""
