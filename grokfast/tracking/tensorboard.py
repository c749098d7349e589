"""`--tensorboard`: every model of a launch as a TensorBoard run, written live as the history streams.

Where (one event file, `events.out.tfevents.grokfast`, per TensorBoard run):

    DIR/tensorboard/                    `grokfast train --out DIR` (one model)
    DIR/tensorboard/model_000/, …       `grokfast train --seeds …` (the model directories' names)
    SWEEP/tensorboard/<cell>/seed_<s>/  `grokfast sweep`: one run per plan row, <cell> the grid
                                        point as field=value,… (no grid: seed_<s> only)
    SWEEP/tensorboard/                  the sweep's HParams experiment (swept fields, metrics)

What: every history statistic at its step (float32, non-finite values left out) under TAGS; the
memorization and grok milestones as `milestone/memorization_step` and `milestone/grok_step`
(value = step, at that step); the config as text (`config`) at step 0; at the end the alignment
probe's statistics (`probe/…` at the probe steps) when a probe was attached, `curves.png` as the
image `curves`, and for a sweep row its HParams session (the swept fields and the seed;
`result/…` metrics = its results.csv columns).

Bytes: a file is a pure function of the run directory's history, milestones, config, curves and
results: records go row by row in the order of the history (a chunk's place never shows), and
every record carries the run's start time (its first "started" event) as wall time, so use the
Step axis. A resume rewrites the file from the history up to its checkpoint (points written after
the checkpoint by a killed run disappear, none repeats) and goes on appending (a server already
showing the run keeps the replaced file open with TensorBoard's default Rust loader until it is
restarted; `--load_fast=false` follows the rewrite). Export (grokfast.sweeps.export) replays a
finished directory through this same logger and writes the same bytes.
"""
from __future__ import annotations

import os
import re
import struct
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES
from grokfast.store.history import atomic_write, read_events
from grokfast.store.result import first_step

from . import event_file as ev
from .base import Logger, RunInfo

TB_DIR = "tensorboard"
EVENT_FILE = "events.out.tfevents.grokfast"
TAGS = {"train_loss": "loss/train", "test_loss": "loss/test",
        "train_acc": "accuracy/train", "test_acc": "accuracy/test",
        "norm_W1": "norm/W1", "norm_W2": "norm/W2", "norm": "norm/theta",
        "grad_norm_W1": "grad/norm_W1", "grad_norm_W2": "grad/norm_W2", "grad_norm": "grad/norm",
        "cos_grad_W1": "cos/grad_W1", "cos_grad_W2": "cos/grad_W2", "cos_grad": "cos/grad",
        "update_norm": "update/norm", "cos_update": "update/cos", "min_margin": "margin/min"}
MILESTONES = (("memorization_step", "train_acc"), ("grok_step", "test_acc"))
METRICS = ("memorization_step", "grok_step", "steps_done", "diverged", "final_train_loss",
           "final_train_acc", "final_test_loss", "final_test_acc", "final_norm")
assert set(TAGS) == set(STAT_NAMES) - {"step"}


def start_time(launch: Path) -> float:
    """Epoch seconds of the launch's first "started" event (0 when there is none)."""
    for rec in read_events(launch):
        if rec.get("event") == "started":
            try:
                return datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except (KeyError, ValueError):
                break
    return 0.0


def run_dirs(launch: Path, models: Sequence[str]) -> list[Path]:
    """The TensorBoard run directory of each model of a `grokfast train` launch."""
    return [Path(launch) / TB_DIR if m == "." else Path(launch) / TB_DIR / m for m in models]


def config_markdown(config) -> str:
    rows = "".join(f"| {k} | {v} |\n" for k, v in config.to_dict().items())
    return "| field | value |\n|---|---|\n" + rows


def _mkdir(d: Path) -> None:
    """Make d (and parents) as directories; from the `tensorboard` directory down, none may be a
    symbolic link (a run never writes through one)."""
    parts = d.parts
    top = max((j for j, part in enumerate(parts) if part == TB_DIR), default=len(parts) - 1)
    for j in range(top, len(parts)):
        p = Path(*parts[: j + 1])
        if p.is_symlink():
            raise GrokfastError(f"{p} is a symbolic link: grokfast writes TensorBoard files only "
                                f"into directories it made; remove the link or choose another --out")
    d.mkdir(parents=True, exist_ok=True)


def _write_new(path: Path, data: bytes) -> None:
    """Replace the event file `path` by `data` (atomically; the directories made as needed)."""
    _mkdir(path.parent)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink()  # left by a process killed mid-write (its name holds "tfevents")
    atomic_write(path, lambda f: f.write(data))


class _ModelFile:
    """One model's event file: its milestones so far and the open file. staged: written beside
    the event file and renamed over it when complete (export: a failure leaves the old file)."""

    def __init__(self, path: Path, config, wall: float, staged: bool = False):
        self.path, self.config, self.wall = path, config, wall
        self.found = {name: False for name, _ in MILESTONES}
        self.f = None
        self.target = path.with_name(f".{path.name}.{os.getpid()}.staged.tmp") if staged else path

    def rows(self, h) -> bytes:
        """The records of history rows h (name → 1-D array), milestones with the row they fall on."""
        steps = np.asarray(h["step"])
        if len(steps) == 0:
            return b""
        marks: dict = {}
        for name, key in MILESTONES:
            threshold = 1.0 if key == "train_acc" else self.config.grok_threshold
            s = None if self.found[name] else first_step(h, key, threshold)
            if s is not None:
                self.found[name] = True
                j = int(np.nonzero(steps == s)[0][0])
                marks.setdefault(j, []).append((f"milestone/{name}", float(s)))
        prefixes = [ev.value_prefix(t) for t in TAGS.values()]
        values = np.stack([np.asarray(h[k], dtype="<f4") for k in TAGS], 1)  # [n, tags]
        raw, finite = values.tobytes(), np.isfinite(values).tolist()
        out, width = [], 4 * len(prefixes)
        for j, ok in enumerate(finite):
            at = j * width
            entries = b"".join(p + raw[at + 4 * k: at + 4 * k + 4]
                               for k, p in enumerate(prefixes) if ok[k])
            entries += b"".join(ev.value_prefix(t) + struct.pack("<f", v)
                                for t, v in marks.get(j, ()))
            out.append(ev.scalar_event(int(steps[j]), self.wall, entries))
        return b"".join(out)

    def open(self, prefix: bytes) -> None:
        if self.target != self.path and self.path.parent.is_dir():
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                tmp.unlink()  # left by an export killed mid-write
        _write_new(self.target, prefix)
        self.f = open(self.target, "ab")

    def close(self) -> None:
        self.sync()
        self.f.close()
        if self.target != self.path:
            os.replace(self.target, self.path)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())


def _scalar_records(step: int, wall: float, values: dict, prefix: str) -> bytes:
    row = [(f"{prefix}{k}", float(np.float32(v))) for k, v in values.items()
           if v is not None and np.isfinite(float(v))]
    return ev.scalars(step, wall, row) if row else b""


class TensorBoardLogger(Logger):
    """The TensorBoard adapter of the logger protocol (see the module docstring).

    runs: the TensorBoard run directory of each model (default: run_dirs of the launch).
    session: (model index, Result) → (hparams dict, metrics dict, HParams status) to write an
    HParams session at the end (sweeps: see sweep_logger). experiment: (directory, hparams
    example) of the HParams experiment to write at the start. staged: each event file replaced
    only once complete (export).
    """

    def __init__(self, runs: Optional[Sequence[Path]] = None, session: Optional[Callable] = None,
                 experiment: Optional[tuple] = None, staged: bool = False):
        ev.protos()  # a missing tensorboardX fails here, before anything runs
        self.runs, self.session, self.experiment = runs, session, experiment
        self.staged = staged
        self.files: list[_ModelFile] = []
        self.run: Optional[RunInfo] = None

    def on_start(self, run: RunInfo) -> None:
        self.run = run
        wall = start_time(run.launch)
        dirs = self.runs if self.runs is not None else run_dirs(run.launch, run.models)
        if len(dirs) != len(run.configs):
            raise GrokfastError(f"TensorBoardLogger got {len(dirs)} run directories for "
                                f"{len(run.configs)} models")
        if self.experiment is not None:
            write_experiment(*self.experiment)
        self.files = []
        for i, (c, d) in enumerate(zip(run.configs, dirs)):
            mf = _ModelFile(Path(d) / EVENT_FILE, c, wall, self.staged)
            data = ev.file_version(wall) + ev.text(0, wall, "config", config_markdown(c))
            if run.rows != 0:
                data += mf.rows(run.history(i))
            mf.open(data)
            self.files.append(mf)

    def on_chunk(self, rows: dict, n_valid: np.ndarray) -> None:
        for i, mf in enumerate(self.files):
            nv = int(n_valid[i])
            if nv:
                mf.f.write(mf.rows({k: rows[k][i, :nv] for k in STAT_NAMES}))
            mf.f.flush()

    def on_event(self, record: dict) -> None:
        if record.get("event") == "checkpoint":
            for mf in self.files:
                mf.sync()

    def on_finish(self, results, status: str) -> None:
        for i, mf in enumerate(self.files):
            if results is not None:
                mf.f.write(self._final(i, mf, results[i]))
            mf.close()
        self.files = []

    def _final(self, i: int, mf: _ModelFile, r) -> bytes:
        """Probe statistics, curves.png and the HParams session of model i, in this order."""
        out, wall, end = [], mf.wall, int(r.steps_done)
        extras = r.extras or {}
        if "probe_step" in extras:
            names = [k[len("probe_"):] for k in extras if k.startswith("probe_") and k != "probe_step"]
            for j, s in enumerate(np.asarray(extras["probe_step"])):
                out.append(_scalar_records(int(s), wall, {n: extras[f"probe_{n}"][j]
                                                          for n in names}, "probe/"))
        png = self.run.launch / self.run.models[i] / "curves.png"
        if png.is_file():
            out.append(ev.image(end, wall, "curves", png.read_bytes()))
        if self.session is not None:
            hparams, metrics, state = self.session(i, r)
            out += [ev.session_start(wall, hparams), _scalar_records(end, wall, metrics, "result/"),
                    ev.session_end(end, wall, state)]
        return b"".join(out)


# ---------------------------------------------------------------------------------------- sweeps
def _name_part(v) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_name_part(x) for x in v)
    return re.sub(r"[^\w.+-]", "_", repr(v) if isinstance(v, float) else str(v))


def row_run_name(values: dict, seed: int) -> str:
    """A sweep row's TensorBoard run, relative to SWEEP/tensorboard: <field=value,…>/seed_<s>."""
    cell = ",".join(f"{k}={_name_part(v)}" for k, v in values.items())
    return f"{cell}/seed_{seed}" if cell else f"seed_{seed}"


def hparam_value(v):
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return v


def session_of_row(row: dict, axes: Sequence[str]) -> tuple[dict, dict, str]:
    """(hparams, metrics, status) of a results.csv row: the swept fields and the seed; METRICS
    (diverged as 0 / 1, empty ones left out); success, failure (diverged, error) or running
    (stopped early, resumable)."""
    hparams = {a: hparam_value(row[a]) for a in axes}
    hparams["seed"] = row["seed"]
    metrics = {k: (float(row[k]) if row[k] is not None else None) for k in METRICS}
    if row.get("error") or row["diverged"]:
        status = "STATUS_FAILURE"
    elif row["stop_reason"] in (None, "grok"):
        status = "STATUS_SUCCESS"
    else:
        status = "STATUS_RUNNING"
    return hparams, metrics, status


def write_experiment(sweep_dir: Path, hparams: dict) -> None:
    """SWEEP/tensorboard's HParams experiment: the hyperparameters of `hparams` (an example row's,
    for their types) and the result/… metrics. The same bytes every time."""
    _write_new(Path(sweep_dir) / TB_DIR / EVENT_FILE, ev.file_version(0.0) + ev.experiment(
        0.0, hparams, [f"result/{m}" for m in METRICS]))


def sweep_logger(sweep_dir: Path, axes: Sequence[str], configs: Sequence, row_of: Callable
                 ) -> TensorBoardLogger:
    """The logger of one sweep launch: model i → SWEEP/tensorboard/row_run_name(...), with the
    HParams session of row_of(i, result) (a results.csv row) and the sweep's experiment."""
    runs = [Path(sweep_dir) / TB_DIR / row_run_name({a: getattr(c, a) for a in axes}, c.seed)
            for c in configs]
    example = {a: hparam_value(getattr(configs[0], a)) for a in axes} | {"seed": configs[0].seed}
    return TensorBoardLogger(runs, session=lambda i, r: session_of_row(row_of(i, r), axes),
                             experiment=(sweep_dir, example))
