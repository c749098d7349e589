"""The plan of a sweep: grid combinations × seeds packed into launches under a memory cap.

Plan rows are the grid's combinations in `itertools.product` order (first axis slowest) with the
seeds innermost. Rows that share every field in SHARED_FIELDS (grokfast.backends.base) are packed
into launches of at most `launch_capacity` models in plan order; rows that differ in a shared field
go to separate launches.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from grokfast.backends.base import SHARED_FIELDS
from grokfast.config import Config
from grokfast.errors import GrokfastError

from .grid import check_grid, check_seeds

# Default memory budget of one launch: the model axis is cut so that model_bytes × models ≤ this.
DEFAULT_LAUNCH_MEMORY = 2 << 30


@dataclass(frozen=True)
class Launch:
    """One batch of models run together: plan rows `rows` (model order) with configs `configs`,
    which share engine.SHARED_FIELDS, in the directory `name` of the sweep directory. `axes`: the
    swept field names (their values head each table row)."""

    index: int
    name: str
    rows: tuple[int, ...]
    configs: tuple[Config, ...]
    axes: tuple[str, ...] = ()

    @property
    def n_models(self) -> int:
        return len(self.configs)

    @property
    def model_steps(self) -> int:
        """Steps × models if no model stops early."""
        return self.configs[0].steps * len(self.configs)




def model_bytes(c: Config) -> int:
    """Estimated memory of one model in a launch of the torch or triton backend: θ, the gradient
    and two scratch copies (4 × P values, P = d_in·width + width·p), optimizer state (1 × P for
    sgd, 2 × P for adam/adamw), filter state (1 × P for EMA, window + 1 × P for MA), training
    activations (about 4·N·width + 2·N·p, one more N·width for the quadratic activation), the
    evaluation's activations (max(N, N_test)·(width + p)) and the history rows of one 1000-step
    chunk (16 statistics, float64)."""
    P = c.d_in * c.width + c.width * c.p
    N, T = c.n_train, c.n_pairs - c.n_train
    item = 8 if c.dtype == "float64" else 4
    vectors = 4 + {"sgd": 1, "adam": 2, "adamw": 2}.get(c.optimizer, 0)
    if c.grad_filter == "ema":
        vectors += 1
    elif c.grad_filter == "ma":
        vectors += c.filter_window + 1
    acts = 4 * N * c.width + 2 * N * c.p + (0 if c.activation == "relu" else N * c.width)
    evals = max(N, T) * (c.width + c.p)
    rows = 16 * 8 * -(-1000 // c.log_every)
    return item * (vectors * P + acts + evals) + rows


def launch_capacity(c: Config, max_models_per_launch: Optional[int] = None,
                    launch_memory: Optional[float] = None) -> int:
    """Models per launch: launch_memory (bytes, default DEFAULT_LAUNCH_MEMORY) // model_bytes(c),
    at least 1, at most max_models_per_launch."""
    budget = DEFAULT_LAUNCH_MEMORY if launch_memory is None else launch_memory
    cap = max(1, int(budget // model_bytes(c)))
    if max_models_per_launch is not None:
        cap = min(cap, max_models_per_launch)
    return cap


def shared_key(c: Config) -> tuple:
    return tuple(getattr(c, f) for f in SHARED_FIELDS)


def plan(base: Config, grid: dict, seeds, *, max_models_per_launch: Optional[int] = None,
         launch_memory: Optional[float] = None) -> list[Launch]:
    """Every combination of `grid` (name → values; first axis slowest) × `seeds` (innermost),
    as launches: rows sharing engine.SHARED_FIELDS packed in plan order, at most
    launch_capacity(...) models each; groups in order of their first row. A combination that
    makes an invalid config raises GrokfastError naming it, before anything runs."""
    if not isinstance(base, Config):
        raise GrokfastError(f"sweep needs a grokfast.Config, got {type(base).__name__}; use "
                            f"Config.preset('paper-real') or Config(...)")
    axes = check_grid(grid)
    seeds = check_seeds(seeds, base)
    if max_models_per_launch is not None and (not isinstance(max_models_per_launch, int)
                                              or max_models_per_launch < 1):
        raise GrokfastError(f"max_models_per_launch={max_models_per_launch!r} must be a positive "
                            f"integer")
    if launch_memory is not None and not (isinstance(launch_memory, (int, float))
                                          and launch_memory > 0):
        raise GrokfastError(f"launch_memory={launch_memory!r} must be a positive number of bytes")
    configs = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        try:
            point = base.replace(**values)
        except GrokfastError as e:
            raise GrokfastError(f"grid point {_describe(values)} is not a valid config: {e}") from None
        configs += [point.replace(seed=s) for s in seeds]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(shared_key(c), []).append(i)
    launches = []
    for rows in groups.values():
        cap = launch_capacity(configs[rows[0]], max_models_per_launch, launch_memory)
        for k in range(0, len(rows), cap):
            part = tuple(rows[k:k + cap])
            n = len(launches)
            launches.append(Launch(n, f"launch_{n:03d}", part, tuple(configs[i] for i in part),
                                   tuple(axes)))
    return launches


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "(no axis)"
