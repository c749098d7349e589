"""Ctrl-C / SIGTERM during a launch: the first signal asks the loop to stop after the current chunk."""
from __future__ import annotations

import signal
import threading


class StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the loop to stop after the current chunk."""

    def __init__(self):
        self.requested = False
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signal.Signals(signum).name
        outer = getattr(self._old.get(signum), "__self__", None)
        if isinstance(outer, StopRequest) and not outer.requested:
            outer._handle(signum, frame)  # an enclosing request (a sweep's) hears it too

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
