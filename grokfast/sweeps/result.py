"""A sweep directory loaded: plan, table and status (SweepResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grokfast.config import Config
from grokfast.errors import GrokfastError, closest
from grokfast.store.history import atomic_write, read_run
from grokfast.store.ownership import live_status, read_json
from grokfast.store.result import Result

from .files import LOCK_FILE, STATUS_FILE, read_plan, saved_grid
from .plan import Launch
from .table import _FLOAT_COLUMNS, _INT_COLUMNS, COLUMNS, RESULTS_FILE, read_table


@dataclass
class SweepResult:
    """A sweep directory loaded: the plan, the table (results.csv) and the status.

    table: list of dicts, one per model of every finished launch, in plan order (COLUMNS after the
    swept fields; None where a cell is empty). axes: swept field → values. plan: list[Launch].
    """

    dir: Path
    base: Config
    axes: dict
    seeds: list
    plan: list
    table: list
    status: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @classmethod
    def load(cls, directory) -> "SweepResult":
        d = Path(directory)
        saved = read_plan(d)
        base = Config.from_dict(saved["base"])
        axes = saved_grid(saved)
        configs = {}
        for r in saved["rows"]:
            values = {k: tuple(v) if k == "betas" else v for k, v in r["values"].items()}
            configs[r["row"]] = base.replace(**values, seed=r["seed"])
        launches = [Launch(l["index"], l["name"], tuple(l["rows"]),
                           tuple(configs[i] for i in l["rows"]), tuple(axes))
                    for l in saved["launches"]]
        status = read_json(d / STATUS_FILE) if (d / STATUS_FILE).is_file() else {}
        if status.get("status") is not None:
            status["status"] = live_status(d, status["status"], LOCK_FILE)
        return cls(dir=d, base=base, axes=axes, seeds=saved["seeds"], plan=launches,
                   table=read_table(d / RESULTS_FILE, tuple(axes)), status=status,
                   options=saved["options"])

    @property
    def columns(self) -> tuple:
        return (*self.axes, *COLUMNS)

    @property
    def n_models(self) -> int:
        return sum(l.n_models for l in self.plan)

    @property
    def complete(self) -> bool:
        return self.status.get("status") == "finished"

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array (float with NaN for empty numeric cells)."""
        if name not in self.columns:
            raise GrokfastError(f"no column {name!r}{closest(name, self.columns)}")
        values = [r[name] for r in self.table]
        if name in _INT_COLUMNS or name in _FLOAT_COLUMNS:
            return np.array([np.nan if v is None else v for v in values], dtype=float)
        return np.array(values, dtype=object)

    def to_pandas(self):
        import pandas as pd
        return pd.read_csv(self.dir / RESULTS_FILE)

    def result(self, i: int):
        """The full Result (history, parameters) of table row i."""
        row = self.table[i]
        launch = next(l for l in self.plan if l.name == row["launch"])
        models = read_run(self.dir / launch.name)["models"]
        key = (tuple(row[a] for a in self.axes), row["seed"])
        j = next(j for j, c in enumerate(launch.configs)
                 if (tuple(getattr(c, a) for a in self.axes), c.seed) == key)
        return Result.load(self.dir / launch.name / models[j])

    def plot(self, rules=None) -> list[Path]:
        """Write the phase diagrams and time-to-grok figures into the sweep directory."""
        from .phases import plot_sweep
        try:
            return plot_sweep(self, rules=rules)
        except Exception as e:  # a figure must never lose a sweep
            text = f"could not draw the figures: {e!r}\n".encode()
            atomic_write(self.dir / "figures.error.txt", lambda f: f.write(text))
            return []

    def summary(self, rules=None) -> str:
        from .phases import summary_lines
        return "\n".join(summary_lines(self, rules=rules))
