"""The run directory while a run streams into it: history chunks, the event log, run.json.

One launch (one ``train``/``sweep`` call with ``out=L``, one model or a batch) writes:

    L/run.json                      format, n_models, model directories, backend, status
    L/history/chunk_<r0>_<r1>.npz   recorded rows r0 ≤ r < r1 of every model (row r is step
                                    r·log_every); member "<stat>/<i>" is model i's float64 column,
                                    only the rows it really recorded (none after it stopped)
    L/events.jsonl                  one JSON object per line: started, memorized, grokked, …
    L/checkpoint.pt                 grokfast.checkpoint
    L/run.lock                      held (flock) by the process writing L (grokfast.ownership)
    model directory                 L itself for one model, else L/model_000, L/model_001, …:
                                    config.json from the start; params.npz, result.json and
                                    curves.png when the run ends (result.json points to L's history)

run.json also records the SHA-256 of every chunk (``"chunks"``, at each checkpoint and at the
end; the checkpoint holds the same list), checked when a column is read (grokfast.integrity).
Model names read back from run.json must be the names model_dirs makes (grokfast.ownership).
Chunk files are written whole (temporary file, fsync, rename), so a reader — ``Result.load`` or
``grokfast show`` on a running or killed run — only ever sees complete chunks, and each column
loads lazily (one zip member per model and statistic).
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES

from .integrity import checksum_table, file_problem, sha256_bytes
from .ownership import check_names, open_append, read_json, real_dir

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
HISTORY_DIR = "history"
RUN_FORMAT = "grokfast-run/1"
_CHUNK = re.compile(r"^chunk_(\d{12})_(\d{12})\.npz$")


def atomic_write(path: Path, write: Callable) -> None:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a stale one (or a link planted there) is never written through
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure(fig, path, dpi: int = 110) -> None:
    """A matplotlib figure written as PNG by rename (a link at `path` is replaced, not followed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def atomic_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def sync_dir(directory: Path) -> None:
    """fsync a directory so that renames inside it survive a power cut (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def model_dirs(launch: Path, n_models: int, single: bool) -> list[str]:
    """Model directories relative to the launch directory: "." for one model, else model_000, …"""
    return ["."] if single else [f"model_{i:03d}" for i in range(n_models)]


def read_run(launch: Path) -> dict:
    """run.json, its model names checked (plain names of the form model_dirs makes)."""
    path = Path(launch) / RUN_FILE
    run = read_json(path)
    check_names(run.get("models"), "model", str(path))
    checksum_table(run.get("chunks") or {}, path)
    return run


def find_launch(model_dir: Path) -> Optional[tuple[Path, int]]:
    """(launch directory, model index) of a streamed model directory, or None."""
    d = Path(model_dir)
    for launch in (d, d.parent):
        if (launch / RUN_FILE).is_file():
            models = read_run(launch)["models"]
            rel = "." if launch == d else d.name
            if rel in models:
                return launch, models.index(rel)
            if launch == d:
                raise GrokfastError(f"{d} holds a launch of {len(models)} models: load one with "
                                    f"Result.load({d / models[0]}) or all with ResultBatch.load({d})")
    return None


# ---------------------------------------------------------------------------------------- chunks
def chunk_files(launch: Path) -> list[tuple[int, int, Path]]:
    """(r0, r1, path) of every complete chunk of a launch, in row order."""
    h = Path(launch) / HISTORY_DIR
    if not h.is_dir():
        return []
    out = []
    for p in h.iterdir():
        m = _CHUNK.match(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(out)


def contiguous_chunks(launch: Path, rows: Optional[int] = None) -> list[Path]:
    """Chunks tiling rows [0, rows) (all contiguous ones from 0 when rows is None)."""
    out, end = [], 0
    for r0, r1, p in chunk_files(launch):
        if rows is not None and r1 > rows:
            break
        if r0 > end:
            raise GrokfastError(f"{Path(launch) / HISTORY_DIR} misses rows {end}–{r0 - 1} of the "
                                f"history (a chunk file was removed); the run cannot be read past "
                                f"row {end}")
        if r0 < end:
            raise GrokfastError(f"{p} overlaps rows {r0}–{end - 1}, already in an earlier chunk "
                                f"(a file that grokfast did not write): remove it")
        out.append(p)
        end = r1
    if rows is not None and end != rows:
        raise GrokfastError(f"{Path(launch) / HISTORY_DIR} holds history rows 0–{end - 1} but the "
                            f"checkpoint needs {rows}; the history files were removed or truncated")
    return out


def truncate_history(launch: Path, rows: int) -> None:
    """Remove chunks past row `rows` (written after the checkpoint a resume starts from)."""
    contiguous_chunks(launch, rows)
    for r0, r1, p in chunk_files(launch):
        if r1 > rows:
            p.unlink()


class HistoryWriter:
    """Buffers recorded rows of a batch and writes them as chunks; never holds more than a chunk.

    A chunk is written when the buffer holds `flush_values` values per statistic, when
    `flush_seconds` have passed since the last write (so a running run stays readable), and on
    flush() (before every checkpoint and at the end).
    """

    def __init__(self, launch: Path, n_models: int, row0: int = 0, flush_values: int = 1 << 18,
                 flush_seconds: float = 30.0, sums: Optional[dict] = None):
        self.dir = real_dir(Path(launch) / HISTORY_DIR, create=True)
        self.sums = dict(sums or {})      # chunk file name → SHA-256 (grokfast.integrity)
        self.n_models = n_models
        self.rows = row0                  # rows durable on disk
        self.flush_values = flush_values
        self.flush_seconds = flush_seconds
        self._pieces: list[tuple[dict, np.ndarray]] = []
        self._buffered = 0
        self._last = time.monotonic()

    @property
    def position(self) -> int:
        """Rows appended so far (written or buffered)."""
        return self.rows + self._buffered

    def append(self, rows: dict, n_valid: np.ndarray) -> None:
        """rows: name → [n_models, n] for the next n rows; model i recorded its first n_valid[i]."""
        n = rows["step"].shape[1]
        if n == 0:
            return
        self._pieces.append((rows, np.asarray(n_valid, dtype=np.int64).copy()))
        self._buffered += n
        if (self._buffered * self.n_models >= self.flush_values
                or time.monotonic() - self._last >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pieces:
            return
        r0, r1 = self.rows, self.rows + self._buffered
        arrays = {}
        for k in STAT_NAMES:
            for i in range(self.n_models):
                arrays[f"{k}/{i}"] = np.concatenate([rows[k][i, : nv[i]] for rows, nv in self._pieces])
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        name = f"chunk_{r0:012d}_{r1:012d}.npz"
        atomic_write(self.dir / name, lambda f: f.write(data))
        self.sums[name] = sha256_bytes(data)
        self.rows, self._pieces, self._buffered = r1, [], 0


class LazyHistory(Mapping):
    """Model `index`'s history read from a launch's chunks: name → float64 array, loaded on access.

    The set of chunks is fixed when the object is made (call refresh() to see newer ones of a
    running run); nothing is cached, so a long run's history never sits in memory unless asked for.
    """

    def __init__(self, launch: Path, index: int, rows: Optional[int] = None,
                 names: Sequence[str] = STAT_NAMES):
        self.launch = Path(launch)
        self.index = index
        self.names = tuple(names)
        self._rows = rows
        self.refresh()

    def refresh(self) -> None:
        self.chunks = contiguous_chunks(self.launch, self._rows)
        has_run = (self.launch / RUN_FILE).is_file()
        self._sums = (read_run(self.launch).get("chunks") or {}) if has_run else {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        key = f"{name}/{self.index}"
        parts = []
        for p in self.chunks:
            problem = file_problem(p, self._sums.get(p.name))
            try:
                if problem is None:
                    with np.load(p) as z:
                        parts.append(z[key])
            except KeyError:
                problem = f"it has no column {key}"
            except Exception as e:  # BadZipFile, a bad CRC, a torn file: the chunk is damaged
                problem = f"it cannot be read ({type(e).__name__}: {e})"
            if problem is not None:
                raise GrokfastError(f"history chunk {p} is damaged: {problem}. The rows before "
                                    f"it are intact; restore it from a copy (or resume: "
                                    f"`grokfast train --resume {self.launch}` continues from a "
                                    f"checkpoint whose history is intact, if there is one)")
        return np.concatenate(parts) if parts else np.zeros(0)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"LazyHistory({str(self.launch)!r}, model {self.index}, {len(self.chunks)} chunks)"

    def materialize(self) -> dict:
        return {k: self[k] for k in self.names}


# ---------------------------------------------------------------------------------------- events
class EventLog:
    """Appends events to L/events.jsonl: {"event", "step", "wall" (s of training), "time", …}."""

    def __init__(self, launch: Path):
        self.path = Path(launch) / EVENTS_FILE
        self._f = open_append(self.path)

    def emit(self, event: str, step: int, wall: float, **fields) -> dict:
        rec = {"event": event, "step": int(step), "wall": round(float(wall), 6),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        return rec

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_events(launch: Path) -> list[dict]:
    """Events of a launch, in order; a line torn by a kill is skipped."""
    path = Path(launch) / EVENTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [e for e in out if isinstance(e, dict) and "event" in e and "step" in e]
