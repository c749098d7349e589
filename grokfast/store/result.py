"""`Result`: what a run returns and saves — config, history, parameters, milestones, divergence.

On disk (``Result.save(dir)``): ``config.json``, ``history.npz`` (one array per statistic),
``params.npz`` (W1 [d_in, width], W2 [width, p]), ``result.json`` (backend, wall time, milestones,
final metrics, divergence, stop reason) and ``curves.png``. ``Result.load(dir)`` round-trips the
arrays bitwise.

A run streamed by ``train(..., out=L)`` keeps its history in L's chunks (grokfast.history) instead
of history.npz: its result.json points there and ``Result.load`` reads the columns lazily. A run
that is still going, or was killed, has no result.json yet: ``Result.load`` then returns the
history written so far and the parameters of the last checkpoint, with ``interrupted`` set.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from grokfast.config import Config
from grokfast.errors import GrokfastError
from grokfast.numerics import param_norm, portable
from grokfast.plotting import pyplot

from .history import LazyHistory, atomic_json, atomic_write, find_launch, read_run
from .integrity import check_result_files, result_checksums
from .ownership import live_status, os_errors, read_json


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
    ``params`` holds W1 [d_in, width] and W2 [width, p] (CPU tensors, config.dtype).

    ``stop_reason``: why the run ended before config.steps, if it did — "grok" (stop_at="grok"),
    "max_steps", "max_time", "signal" (Ctrl-C / SIGTERM), "diverged", or a note on a partial run.
    ``milestones``: memorization_step / grok_step when known without reading the whole history
    (the engine tracks them while streaming); otherwise they are computed from ``history``.
    """

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
    stop_reason: Optional[str] = None
    milestones: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def memorization_step(self) -> Optional[int]:
        """First recorded step with training accuracy 1."""
        if "memorization_step" in self.milestones:
            return self.milestones["memorization_step"]
        return first_step(self.history, "train_acc", 1.0)

    @property
    def grok_step(self) -> Optional[int]:
        """First evaluated step with test accuracy ≥ config.grok_threshold."""
        if "grok_step" in self.milestones:
            return self.milestones["grok_step"]
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
        if self.stop_reason == "grok":
            lines.append(f"stopped: test accuracy held ≥ {c.grok_threshold} (stop_at='grok')")
        elif self.stop_reason and self.stop_reason != "diverged":
            lines.append(f"stopped: {self.stop_reason}")
        if self.interrupted:
            lines.append("interrupted: the run stopped early; everything recorded so far is kept "
                         "(a run saved with --out continues with `grokfast train --resume DIR`)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def save(self, directory, curves: bool = True) -> Path:
        """Write the run to `directory` (see the module docstring); a history streamed into this
        same directory stays where it is, any other history is written whole to history.npz.
        curves=False skips curves.png (a sweep's models: ~0.5 s of matplotlib each)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "config.json", lambda f: f.write(self.config.to_json().encode()))
        history_ref = _streamed_here(self.history, d)
        if history_ref is None:
            _atomic_npz(d / "history.npz", {k: np.asarray(v) for k, v in self.history.items()})
        _atomic_npz(d / "params.npz", {k: v.detach().cpu().numpy() for k, v in self.params.items()})
        if self.extras:
            _atomic_npz(d / "extras.npz", {k: np.asarray(v) for k, v in self.extras.items()})
        meta = dict(backend=self.backend, numerics=self.config.numerics,
                    wall_time=self.wall_time, steps_done=self.steps_done,
                    diverged=self.diverged, interrupted=self.interrupted, final=self.final,
                    memorization_step=self.memorization_step, grok_step=self.grok_step,
                    stop_reason=self.stop_reason, history=history_ref or "history.npz",
                    checksums=result_checksums(d, ["config.json", "params.npz", *(
                        [] if history_ref else ["history.npz"]), *(
                        ["extras.npz"] if self.extras else [])]))
        atomic_json(d / "result.json", meta)
        if not curves:
            return d
        try:
            plot_curves(self, d / "curves.png")
        except Exception as e:  # a plot must never lose a run
            text = f"could not draw curves.png: {e!r}\n".encode()
            atomic_write(d / "curves.error.txt", lambda f: f.write(text))
        return d

    @classmethod
    def load(cls, directory) -> "Result":
        """A saved run, a streamed run, or the part so far of a running or killed streamed run.
        Files with a checksum in result.json are verified; a damaged one is a GrokfastError
        naming it."""
        with os_errors(directory, "read"):
            return cls._load(Path(directory))

    @classmethod
    def _load(cls, d: Path) -> "Result":
        if not (d / "config.json").is_file():
            find_launch(d)  # raises, naming the model directories, when d holds a batch
            raise GrokfastError(f"{d} is not a grokfast run directory: config.json is missing "
                                f"(save one with Result.save or `grokfast train --out DIR`)")
        meta = read_json(d / "result.json") if (d / "result.json").is_file() else {}
        check_result_files(d, meta)
        config = Config.from_dict(read_json(d / "config.json"))
        ref = meta.get("history", "history.npz")
        if isinstance(ref, dict) and (d / "params.npz").is_file():
            history = LazyHistory(_history_launch(d, ref), ref.get("index"))
            milestones = {k: meta.get(k) for k in ("memorization_step", "grok_step")}
        elif (d / "history.npz").is_file() and (d / "params.npz").is_file():
            history = _npz(d / "history.npz", tensors=False)
            milestones = {}
        else:
            launch = find_launch(d)
            if launch is None:
                missing = "history.npz" if not (d / "history.npz").is_file() else "params.npz"
                raise GrokfastError(f"{d} is not a grokfast run directory: {missing} is missing "
                                    f"(save one with Result.save or `grokfast train --out DIR`)")
            return _load_partial(config, *launch)
        params = _npz(d / "params.npz", tensors=True)
        extras = _npz(d / "extras.npz", tensors=False) if (d / "extras.npz").is_file() else {}
        return cls(config=config, history=history, params=params,
                   backend=meta.get("backend", "unknown"), wall_time=meta.get("wall_time", 0.0),
                   steps_done=meta.get("steps_done", 0), diverged=meta.get("diverged"),
                   interrupted=meta.get("interrupted", False), final=meta.get("final", {}),
                   extras=extras, stop_reason=meta.get("stop_reason"), milestones=milestones)


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

    @classmethod
    def load(cls, directory) -> "ResultBatch":
        """Every model of a batch directory (model_000, model_001, …), finished or partial."""
        d = Path(directory)
        if (d / "run.json").is_file():
            subs = [d / m for m in read_run(d)["models"]]
        else:
            subs = sorted(p for p in d.glob("model_*") if p.is_dir())
        if not subs:
            raise GrokfastError(f"{d} holds no batch of runs (no model_* directories): pass a "
                                f"directory written by `grokfast train --seeds A:B --out DIR`")
        return cls(Result.load(s) for s in subs)


def _streamed_here(history, d: Path) -> Optional[dict]:
    """{"launch": relative path, "index": i} when `history` streams into model directory d."""
    if not isinstance(history, LazyHistory):
        return None
    try:
        found = find_launch(d)
    except GrokfastError:  # d is a batch's launch directory, not a model directory
        return None
    if found is None or found[1] != history.index or \
            found[0].resolve() != history.launch.resolve():
        return None
    return {"launch": os.path.relpath(history.launch, d), "index": history.index}


def _load_partial(config: Config, launch: Path, index: int) -> Result:
    """History written so far and the last checkpoint's parameters of a running or killed run."""
    from grokfast.data import make_dataset
    from grokfast.model import evaluate

    from .checkpoint import load_checkpoint

    run = read_run(launch)
    status = live_status(launch, run.get("status", "unknown"))
    history = LazyHistory(launch, index)
    params, steps_done, wall, where = {}, 0, 0.0, "no checkpoint yet"
    try:
        ckpt = load_checkpoint(launch)
    except GrokfastError as e:
        where = f"checkpoint unreadable: {e}"
    else:
        W1, W2 = ckpt["params"]
        params = {"W1": W1[index], "W2": W2[index]}
        steps_done, wall = int(ckpt["launch"]["steps_done"][index]), float(ckpt["launch"]["wall"])
        where = f"last checkpoint at step {ckpt['step']}"
    steps = history["step"]
    upto = f"history to step {int(steps[-1])}" if len(steps) else "no history yet"
    final = {}
    if params and torch.isfinite(params["W1"]).all() and torch.isfinite(params["W2"]).all():
        final = evaluate(config, make_dataset(config), params["W1"], params["W2"])
        final["norm"] = param_norm(params["W1"], params["W2"], portable(config))
    note = (f"partial run (status {status}): {upto}, "
            f"{where}; continue it with `grokfast train --resume {launch}`")
    return Result(config=config, history=history, params=params, backend=run.get("backend", "unknown"),
                  wall_time=wall, steps_done=steps_done, interrupted=True, final=final,
                  stop_reason=note)


def _history_launch(d: Path, ref: dict) -> Path:
    """The launch directory a result.json points to: d itself or its parent, nothing else."""
    if ref.get("launch") not in (".", "..") or not isinstance(ref.get("index"), int):
        raise GrokfastError(f"{d / 'result.json'} points its history to {ref!r}, not a place "
                            f"grokfast writes: restore the file")
    return d / ref["launch"]


def _npz(path: Path, tensors: bool) -> dict:
    """Every array of an .npz (torch tensors if asked); GrokfastError naming a damaged file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(z[k].copy()) if tensors else z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise GrokfastError(f"{path} is damaged ({type(e).__name__}: {e}): restore it from a copy, "
                            f"or train the run again") from None


def _atomic_npz(path: Path, arrays: dict) -> None:
    """Write an .npz through a temporary file, fsync and rename, so a crash never leaves half a file."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def plot_curves(result: Result, path) -> None:
    """Loss, accuracy and ‖θ‖ against steps on a log-x axis, as the grokking literature plots them."""
    plt = pyplot()
    h = _thin({k: result.history[k] for k in ("step", "train_loss", "test_loss", "train_acc",
                                                "test_acc", "norm", "norm_W1", "norm_W2")})
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
    from .history import save_figure
    save_figure(fig, path)
    plt.close(fig)


def _thin(h: dict, n_max: int = 20_000) -> dict:
    """At most ~n_max rows, log-spaced in the row index (the plots are log-x), evaluations kept."""
    n = len(h["step"])
    if n <= n_max:
        return h
    keep = np.unique(np.geomspace(1, n, n_max // 2).astype(np.int64) - 1)
    evaluated = np.nonzero(np.isfinite(h["test_acc"]))[0]
    if len(evaluated) > n_max // 2:
        evaluated = evaluated[np.unique(np.geomspace(1, len(evaluated), n_max // 2).astype(np.int64) - 1)]
    keep = np.union1d(keep, evaluated)
    return {k: v[keep] for k, v in h.items()}
