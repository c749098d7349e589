"""Where a launch's history, events, checkpoints and results go: a run directory, or memory.

Both sinks take the same calls from the run loop (grokfast.engine); the memory sink keeps the
history rows and drops events and checkpoints.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES
from grokfast.profiling import nvtx_range
from grokfast.store.history import (
    HISTORY_DIR,
    RUN_FILE,
    RUN_FORMAT,
    EventLog,
    HistoryWriter,
    LazyHistory,
    atomic_json,
    atomic_write,
    model_dirs,
    read_run,
    sync_dir,
    truncate_history,
)
from grokfast.store.ownership import real_dir
from grokfast.tracking import RunInfo

from .chunks import rows_before
from .monitor import Progress


class MemorySink:
    """The history of a launch without a run directory, kept in memory as chunks of rows."""

    def __init__(self):
        self.pieces: list[tuple[dict, np.ndarray]] = []

    def event(self, name: str, step: int, wall: float, **fields_) -> None:
        pass

    def append(self, rows: dict, n_valid: np.ndarray) -> None:
        self.pieces.append((rows, n_valid))

    def checkpoint(self, *args) -> float:
        return time.perf_counter()

    def hard_stop(self, step: int, wall: float) -> bool:
        """A second signal broke into a chunk: in memory, keep going to the Result."""
        return False

    def history(self, i: int) -> dict:
        return {k: np.concatenate([rows[k][i, : nv[i]] for rows, nv in self.pieces]) if self.pieces
                else np.zeros(0) for k in STAT_NAMES}

    def finish(self, results, prog: Progress, elapsed: float, interrupted: bool, reason,
               signal, curves: bool) -> None:
        pass


class RunDirSink:
    """The run directory of a streaming launch: model directories, run.json, history, events."""

    def __init__(self, launch: Path, configs: Sequence[Config], single: bool, backend: str,
                 resume: Optional[dict], loggers: Sequence = ()):
        self.launch = launch
        M = len(configs)
        sums = {}
        if resume is None:  # the directory was claimed (grokfast.ownership.claim_new)
            real_dir(launch, create=True)
            self.models = model_dirs(launch, M, single)
            row0 = 0
        else:
            self.models = read_run(launch)["models"]
            if len(self.models) != M:
                raise GrokfastError(f"{launch / RUN_FILE} lists {len(self.models)} models but the "
                                    f"checkpoint holds {M}: restore run.json from a copy")
            row0 = int(resume["rows"])
            truncate_history(launch, row0)
            for tmp in [*launch.glob(".*.tmp"), *(launch / HISTORY_DIR).glob(".*.tmp")]:
                tmp.unlink()  # left by a process killed mid-write
            sums = resume.get("chunks") or {}
        self._write_configs(configs)
        self.run = dict(format=RUN_FORMAT, n_models=M, models=self.models, backend=backend,
                        seeds=[c.seed for c in configs], steps=configs[0].steps,
                        log_every=configs[0].log_every, layout="single" if single else "batch",
                        status="running", chunks=dict(sums))
        atomic_json(launch / RUN_FILE, self.run)
        self.writer = HistoryWriter(launch, M, row0=row0, sums=sums)
        self.events = EventLog(launch)
        # trackers (grokfast.tracking): started at the first event, after the history is truncated
        self.loggers = list(loggers)
        self._info = RunInfo(launch, tuple(configs), tuple(self.models), row0)
        self._logging = False

    def _write_configs(self, configs: Sequence[Config]) -> None:
        for c, m in zip(configs, self.models):
            d = real_dir(self.launch / m, create=True)
            for stale in ("result.json", "params.npz", "history.npz", "extras.npz", "curves.png",
                          "curves.error.txt"):
                (d / stale).unlink(missing_ok=True)
            atomic_write(d / "config.json", lambda f, c=c: f.write(c.to_json().encode()))

    def event(self, name: str, step: int, wall: float, **fields_) -> None:
        rec = self.events.emit(name, step, wall,
                               **{k: v for k, v in fields_.items() if v is not None})
        if self.loggers and not self._logging:
            self._logging = True
            for lg in self.loggers:
                lg.on_start(self._info)
        for lg in self.loggers:
            lg.on_event(rec)

    def append(self, rows: dict, n_valid: np.ndarray) -> None:
        self.writer.append(rows, n_valid)
        for lg in self.loggers:
            lg.on_chunk(rows, n_valid)

    def _finish_loggers(self, results, status: str) -> None:
        if self._logging:
            for lg in self.loggers:
                lg.on_finish(results, status)
            self._logging = False

    def checkpoint(self, stepper, prog: Progress, configs, chunk: int, stop_at, patience: int,
                   wall: Callable[[], float], log_every: int) -> float:
        """Write checkpoint.pt (and its event); returns the perf_counter time it was complete."""
        from grokfast.store.checkpoint import rng_state, save_checkpoint
        with nvtx_range("checkpoint"):
            t = time.perf_counter()
            self.writer.flush()
            assert self.writer.rows == rows_before(prog.step, log_every), "history position off"
            sync_dir(self.writer.dir)
            self.events.sync()
            save_checkpoint(self.launch, dict(
                backend=stepper.backend, layout=self.run["layout"],
                configs=[c.to_dict() for c in configs], chunk=chunk, stop_at=stop_at,
                stop_patience=patience, step=prog.step, rows=self.writer.rows,
                launch=prog.to_dict(wall()), stepper=stepper.state_dict(), params=stepper.params(),
                rng=rng_state(), time=time.time(), chunks=dict(self.writer.sums)))
            self.run["chunks"] = dict(self.writer.sums)
            atomic_json(self.launch / RUN_FILE, self.run)
            done = time.perf_counter()
            self.event("checkpoint", prog.step, wall(), seconds=round(done - t, 6))
        return done

    def hard_stop(self, step: int, wall: float) -> bool:
        """A second signal broke into a chunk: keep the last complete checkpoint, mark the run
        interrupted and let the KeyboardInterrupt through."""
        self.writer.flush()
        self.event("interrupted", step, wall, reason="second signal",
                   checkpoint="kept the last complete checkpoint")
        self._finish_loggers(None, "interrupted")
        self.set_status("interrupted")
        self.close()
        return True

    def history(self, i: int) -> LazyHistory:
        return LazyHistory(self.launch, i)

    def finish(self, results, prog: Progress, elapsed: float, interrupted: bool, reason,
               signal, curves: bool) -> None:
        """Save every Result in its model directory, log how the call ended, close."""
        for r, m in zip(results, self.models):
            r.save(self.launch / m, curves=curves)
        done = [int(s) for s in prog.steps_done]
        if interrupted:
            self.event("interrupted", prog.step, elapsed, reason=reason, steps_done=done,
                       signal=signal)
        else:
            self.event("finished", prog.step, elapsed, steps_done=done,
                       stop_reasons=prog.stop_reason if any(prog.stop_reason) else None)
        self._finish_loggers(results, "interrupted" if interrupted else "finished")
        self.set_status("interrupted" if interrupted else "finished")
        self.close()

    def os_failure(self, step: int, wall: float, error: OSError) -> None:
        """An OSError (disk full, …) stopped the run: mark it interrupted where the disk still
        takes it (else a reader sees the stale "running" as interrupted: no lock is held)."""
        try:
            self.event("interrupted", step, wall, reason=f"{type(error).__name__}: {error}",
                       checkpoint="kept the last complete checkpoint")
            self.set_status("interrupted")
        except OSError:
            pass
        try:
            self.events.close()
        except OSError:
            pass

    def set_status(self, status: str) -> None:
        self.run["status"] = status
        self.run["chunks"] = dict(self.writer.sums)
        atomic_json(self.launch / RUN_FILE, self.run)

    def close(self) -> None:
        self.writer.flush()
        self.events.close()
