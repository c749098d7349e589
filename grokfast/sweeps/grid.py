"""A sweep's grid and seeds from Python values or `--grid NAME=VALUES` text, validated."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from grokfast.config import Config, field_names, parse_value
from grokfast.errors import GrokfastError, closest
from grokfast.inputs import check_seeds as check_distinct_seeds


def parse_values(name: str, text: str) -> list:
    """The values of one grid axis from text: "a,b,c", "logspace:A:B:N" (N values from A to B,
    geometric), "linspace:A:B:N" or "range:A:B[:STEP]" (integers, B excluded)."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    if kind in ("logspace", "linspace", "range"):
        parts = rest.split(":")
        try:
            if kind == "range":
                if len(parts) not in (2, 3):
                    raise ValueError
                nums = [int(x) for x in parts]
                values = list(range(*nums))
            else:
                if len(parts) != 3:
                    raise ValueError
                a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
                if n < 1 or not (math.isfinite(a) and math.isfinite(b)):
                    raise ValueError
                if kind == "logspace" and (a <= 0 or b <= 0):
                    values = None
                else:
                    raw = np.geomspace(a, b, n) if kind == "logspace" else np.linspace(a, b, n)
                    values = [float(f"{v:.12g}") for v in raw]
        except ValueError:
            raise GrokfastError(f"{name}={text}: write {kind}:A:B:N (N values from A to B)"
                                if kind != "range" else
                                f"{name}={text}: write range:A:B or range:A:B:STEP (integers, B "
                                f"excluded)") from None
        if values is None:
            raise GrokfastError(f"{name}={text}: logspace needs positive ends A, B > 0")
        default = _default(name)
        if isinstance(default, int) and not isinstance(default, bool) and kind != "range":
            values = [int(round(v)) for v in values]
        values = [parse_value(name, repr(v)) for v in values]
    else:
        if not text or any(not t.strip() for t in text.split(",")):
            raise GrokfastError(f"{name}={text!r}: list the values separated by commas (e.g. "
                                f"{name}=1e-4,2e-4), or write logspace:A:B:N, linspace:A:B:N or "
                                f"range:A:B")
        if name == "betas":
            raise GrokfastError("betas cannot be swept from text (its values hold commas); pass "
                                "grid={'betas': [(0.9, 0.98), …]} from Python")
        values = [parse_value(name, t.strip()) for t in text.split(",")]
    if not values:
        raise GrokfastError(f"{name}={text}: gives no value")
    return values


def _default(name: str):
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


def parse_grid_arg(text: str) -> tuple[str, list]:
    """One `--grid NAME=VALUES` argument → (name, values); see parse_values for VALUES."""
    if "=" not in text:
        raise GrokfastError(f"--grid {text!r}: write NAME=VALUES, e.g. --grid weight_decay=1e-4,"
                            f"2e-4 or --grid lr=logspace:0.1:1:5")
    name, values = text.split("=", 1)
    name = name.strip()
    _check_axis_name(name)
    return name, parse_values(name, values)


def _check_axis_name(name: str) -> None:
    if name == "seed":
        raise GrokfastError("seeds are given apart from the grid: use --seeds A:B (seeds=[...])")
    valid = field_names()
    if name not in valid:
        raise GrokfastError(f"--grid {name}: not a config field{closest(name, valid)}; valid "
                            f"fields: {', '.join(f for f in valid if f != 'seed')}")


def check_grid(grid) -> dict:
    """name → list of values, validated: config fields (not seed), each with ≥ 1 distinct value."""
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise GrokfastError(f"grid must be a dict name → list of values, got {type(grid).__name__}")
    out = {}
    for name, values in grid.items():
        _check_axis_name(name)
        if isinstance(values, str):
            values = parse_values(name, values)
        elif isinstance(values, (int, float, bool)) or values is None:
            values = [values]
        elif name == "betas" and isinstance(values, tuple) and all(
                isinstance(v, (int, float)) for v in values):
            values = [values]
        else:
            values = list(values)
        if not values:
            raise GrokfastError(f"grid axis {name!r} is empty: give it at least one value")
        if name == "betas":
            values = [tuple(float(b) for b in v) for v in values]
        for i, v in enumerate(values):
            if v in values[:i]:
                raise GrokfastError(f"grid axis {name!r} lists {v!r} twice: give distinct values")
        out[name] = values
    return out


def check_seeds(seeds, base: Config) -> list[int]:
    """The seeds of every grid point (default: the config's seed), validated (grokfast.inputs)."""
    return [base.seed] if seeds is None else check_distinct_seeds(seeds)