"""What the reproduce reports share: Markdown cells and tables, JSON of numpy values, and their
writers (by rename: a link at the path is replaced, never followed)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from grokfast.store import history
from grokfast.store.history import atomic_write


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


def write_text(path, text: str) -> None:
    """`text` into the file at path, by rename."""
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=json_default))


def write_npz(path, arrays: dict) -> None:
    """numpy arrays into an .npz at path, by rename."""
    atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def read_npz(path) -> dict:
    """An .npz written by write_npz: name → array, the file closed."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_png(fig, path) -> None:
    """A figure written as PNG by rename (grokfast.store.history.save_figure, looked up when
    called so that the tests' figure capture sees it)."""
    history.save_figure(fig, path)
