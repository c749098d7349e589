"""What the reproduce reports share: Markdown cells and tables, and JSON of numpy values."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def cell(v, spec: str = "{:.3f}") -> str:
    """A table cell: "—" for None or a non-finite float, a float through `spec`, else str(v)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return spec.format(v) if isinstance(v, float) else str(v)


def number(v, spec: str = "{:.3g}") -> str:
    """A number through `spec` (ints too), "—" for None or a non-finite float."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return spec.format(v)


def md_table(header, rows) -> list:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def json_default(v):
    """json.dumps default for numpy scalars and arrays."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=json_default))
