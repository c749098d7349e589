"""The local executor: a sweep's launches one after another in this process."""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

from .launch import run_launch
from .options import SweepOptions
from .plan import Launch
from .table import RESUMABLE_STOPS


class LocalExecutor:
    """Runs launches one after another in this process.

    on_chunk(launch, steps, models stepped): progress hook, after every chunk of a launch.
    should_stop(): checked between
    launches (the sweep's Ctrl-C handler). With options.max_time, the sweep's budget: each launch
    gets the time left, and none starts once it is spent. A launch stopped by a signal or the time
    budget ends the run (the rest stays pending, for --resume)."""

    def __init__(self, on_chunk: Optional[Callable[[Launch, int, int], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None):
        self.on_chunk = on_chunk
        self.should_stop = should_stop

    def run(self, launches: Sequence[Launch], sweep_dir, options: SweepOptions,
            on_done: Callable[[Launch, list], None]) -> None:
        deadline = None if options.max_time is None else time.monotonic() + options.max_time
        for launch in launches:
            if self.should_stop is not None and self.should_stop():
                return
            opts = options
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                opts = dataclasses.replace(options, max_time=left)
            hook = None if self.on_chunk is None else functools.partial(self.on_chunk, launch)
            rows = run_launch(launch, sweep_dir, opts, on_chunk=hook)
            on_done(launch, rows)
            if any(r["stop_reason"] in RESUMABLE_STOPS for r in rows):
                return
