"""`Result`: what a run returns and saves — config, history, parameters, milestones, divergence.

On disk (``Result.save(dir)``): ``config.json``, ``history.npz`` (one array per statistic),
``params.npz`` (W1 [d_in, width], W2 [width, p]), ``result.json`` (backend, wall time, milestones,
final metrics, divergence) and ``curves.png``. ``Result.load(dir)`` round-trips the arrays bitwise.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import Config
from .errors import GrokfastError


def first_step(history: dict, name: str, threshold: float) -> Optional[int]:
    """First recorded step whose `name` is ≥ threshold (NaN rows skipped), or None."""
    values = history.get(name)
    if values is None or len(values) == 0:
        return None
    hit = np.nonzero(np.nan_to_num(values, nan=-np.inf) >= threshold)[0]
    return int(history["step"][hit[0]]) if len(hit) else None


@dataclass
class Result:
    """One model's run. ``history[name]`` is a float64 array over recorded steps (model.STAT_NAMES);
    ``params`` holds W1 [d_in, width] and W2 [width, p] (CPU tensors, config.dtype)."""

    config: Config
    history: dict
    params: dict
    backend: str = "reference"
    wall_time: float = 0.0
    steps_done: int = 0
    diverged: Optional[str] = None
    interrupted: bool = False
    final: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # name → array from observers (e.g. the alignment probe)

    @property
    def memorization_step(self) -> Optional[int]:
        """First recorded step with training accuracy 1."""
        return first_step(self.history, "train_acc", 1.0)

    @property
    def grok_step(self) -> Optional[int]:
        """First evaluated step with test accuracy ≥ config.grok_threshold."""
        return first_step(self.history, "test_acc", self.config.grok_threshold)

    @property
    def W1(self) -> torch.Tensor:
        return self.params["W1"]

    @property
    def W2(self) -> torch.Tensor:
        return self.params["W2"]

    def summary(self) -> str:
        c = self.config
        lines = [f"backend {self.backend}, {self.steps_done} of {c.steps} steps in "
                 f"{self.wall_time:.1f} s ({self.steps_done / max(self.wall_time, 1e-9):,.0f} steps/s)",
                 f"memorized (train acc 1) at step: {self.memorization_step}",
                 f"grokked (test acc ≥ {c.grok_threshold}) at step: {self.grok_step}"]
        if self.final:
            f = self.final
            lines.append(f"final: train loss {f['train_loss']:.3g} acc {f['train_acc']:.3f}, "
                         f"test loss {f['test_loss']:.3g} acc {f['test_acc']:.3f}, "
                         f"‖θ‖ {f.get('norm', float('nan')):.4g}")
        if self.diverged:
            lines.append(f"DIVERGED: {self.diverged}")
        if self.interrupted:
            lines.append("interrupted: the run stopped early; everything recorded so far is kept")
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(self.config.to_json())
        _atomic_npz(d / "history.npz", {k: np.asarray(v) for k, v in self.history.items()})
        _atomic_npz(d / "params.npz", {k: v.detach().cpu().numpy() for k, v in self.params.items()})
        if self.extras:
            _atomic_npz(d / "extras.npz", {k: np.asarray(v) for k, v in self.extras.items()})
        meta = dict(backend=self.backend, wall_time=self.wall_time, steps_done=self.steps_done,
                    diverged=self.diverged, interrupted=self.interrupted, final=self.final,
                    memorization_step=self.memorization_step, grok_step=self.grok_step)
        (d / "result.json").write_text(json.dumps(meta, indent=2))
        try:
            plot_curves(self, d / "curves.png")
        except Exception as e:  # a plot must never lose a run
            (d / "curves.error.txt").write_text(f"could not draw curves.png: {e!r}\n")
        return d

    @classmethod
    def load(cls, directory) -> "Result":
        d = Path(directory)
        for name in ("config.json", "history.npz", "params.npz"):
            if not (d / name).is_file():
                raise GrokfastError(f"{d} is not a grokfast run directory: {name} is missing "
                                    f"(save one with Result.save or `grokfast train --out DIR`)")
        config = Config.from_json((d / "config.json").read_text())
        with np.load(d / "history.npz") as h:
            history = {k: h[k] for k in h.files}
        with np.load(d / "params.npz") as pz:
            params = {k: torch.from_numpy(pz[k].copy()) for k in pz.files}
        meta = json.loads((d / "result.json").read_text()) if (d / "result.json").is_file() else {}
        extras = {}
        if (d / "extras.npz").is_file():
            with np.load(d / "extras.npz") as ez:
                extras = {k: ez[k] for k in ez.files}
        return cls(config=config, history=history, params=params,
                   backend=meta.get("backend", "unknown"), wall_time=meta.get("wall_time", 0.0),
                   steps_done=meta.get("steps_done", 0), diverged=meta.get("diverged"),
                   interrupted=meta.get("interrupted", False), final=meta.get("final", {}),
                   extras=extras)


class ResultBatch(list):
    """Results of models run together (a leading model axis): a list of Result with stacked views."""

    @property
    def history(self) -> dict:
        """name → [n_models, n_rows]; shorter (stopped or diverged) runs padded with NaN."""
        n = max((len(r.history["step"]) for r in self), default=0)
        out = {}
        for k in self[0].history:
            arr = np.full((len(self), n), np.nan)
            for i, r in enumerate(self):
                arr[i, : len(r.history[k])] = r.history[k]
            out[k] = arr
        return out

    @property
    def params(self) -> dict:
        return {k: torch.stack([r.params[k] for r in self]) for k in self[0].params}

    @property
    def memorization_step(self) -> list:
        return [r.memorization_step for r in self]

    @property
    def grok_step(self) -> list:
        return [r.grok_step for r in self]

    def save(self, directory) -> Path:
        d = Path(directory)
        for i, r in enumerate(self):
            r.save(d / f"model_{i:03d}")
        return d


def _atomic_npz(path: Path, arrays: dict) -> None:
    """Write an .npz through a temporary file, fsync and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot_curves(result: Result, path) -> None:
    """Loss, accuracy and ‖θ‖ against steps on a log-x axis, as the grokking literature plots them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.history
    x = h["step"] + 1
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    ax.plot(x, h["train_loss"], label="train")
    ok = np.isfinite(h["test_loss"])
    ax.plot(x[ok], h["test_loss"][ok], label="test")
    ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="loss", title="loss")
    ax.legend()
    ax = axes[1]
    ax.plot(x, h["train_acc"], label="train")
    ax.plot(x[ok], h["test_acc"][ok], label="test")
    for s, name in ((result.memorization_step, "memorized"), (result.grok_step, "grokked")):
        if s is not None:
            ax.axvline(s + 1, ls="--", lw=0.8, color="gray")
    ax.set(xscale="log", xlabel="step + 1", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    ax.legend()
    ax = axes[2]
    ax.plot(x, h["norm"], label="‖θ‖")
    ax.plot(x, h["norm_W1"], label="‖W1‖", lw=0.8)
    ax.plot(x, h["norm_W2"], label="‖W2‖", lw=0.8)
    ax.set(xscale="log", xlabel="step + 1", ylabel="norm", title="weight norm")
    ax.legend()
    c = result.config
    fig.suptitle(f"p={c.p} {c.operation} {c.encoding} width={c.width} {c.activation} {c.loss} "
                 f"{c.optimizer} lr={c.lr:g} wd={c.weight_decay:g} seed={c.seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
