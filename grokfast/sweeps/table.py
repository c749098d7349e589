"""results.csv: one row per model of every finished launch, in plan order, rewritten atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from grokfast.config import parse_value
from grokfast.errors import GrokfastError
from grokfast.store.history import atomic_write

# results.csv: the swept fields first (grid order), then these.
COLUMNS = ("seed", "memorization_step", "grok_step", "final_train_loss", "final_train_acc",
           "final_test_loss", "final_test_acc", "final_norm", "steps_done", "stop_reason",
           "diverged", "diverged_steps", "launch", "wall_time", "error")
_INT_COLUMNS = ("seed", "memorization_step", "grok_step", "steps_done")
_FLOAT_COLUMNS = ("final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
                  "final_norm", "wall_time")
# stop reasons of a launch that stopped early and continues with --resume
RESUMABLE_STOPS = ("signal", "max_time", "max_steps")

RESULTS_FILE = "results.csv"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def table_csv(rows: Sequence[dict], axes: Sequence[str]) -> str:
    header = [*axes, *COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r.get(k)) for k in header])
    return buf.getvalue()


def _parse_cell(name: str, text: str, axes: Sequence[str]):
    if text == "":
        return None
    if name in axes:
        if name == "betas":
            return tuple(float(x) for x in text.strip("()[] ").split(","))
        return parse_value(name, text)
    if name in _INT_COLUMNS:
        return int(text)
    if name in _FLOAT_COLUMNS:
        return float(text)
    if name == "diverged":
        return text == "True"
    return text


def read_table(path: Path, axes: Sequence[str]) -> list[dict]:
    if not Path(path).is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: _parse_cell(k, v, axes) for k, v in r.items()} for r in csv.DictReader(f)]
    except (UnicodeDecodeError, csv.Error, ValueError, TypeError, AttributeError,
            GrokfastError) as e:
        raise GrokfastError(f"{path} is damaged ({type(e).__name__}: {e}): `grokfast sweep "
                            f"--resume {Path(path).parent}` rewrites it from the launches") from None
    for r in rows:
        r.setdefault("diverged_steps", None)  # a table written before the column existed
        if None in r or any(k not in r for k in ("seed", "launch")):
            raise GrokfastError(f"{path} is damaged (a row does not match its header): `grokfast "
                                f"sweep --resume {Path(path).parent}` rewrites it")
    return rows


class Table:
    """The rows known so far, by plan row; results.csv rewritten atomically on every change."""

    def __init__(self, sweep_dir: Path, axes: Sequence[str]):
        self.path = sweep_dir / RESULTS_FILE
        self.axes = tuple(axes)
        self.by_row: dict[int, dict] = {}

    def set(self, launch, rows: Sequence[dict]) -> None:
        for i, r in zip(launch.rows, rows):
            self.by_row[i] = r
        self.write()

    def write(self) -> None:
        text = table_csv([self.by_row[i] for i in sorted(self.by_row)], self.axes)
        atomic_write(self.path, lambda f: f.write(text.encode()))
