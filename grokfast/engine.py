"""`grokfast.train` and `grokfast.sweep`: config → data → backend stepper → history → Result.

A backend is a *stepper* over a batch of models that share every shape (the model axis):

    stepper = Stepper(configs, data, device)
    rows = stepper.advance(step0, n_steps, active)   # name → [n_models, n_rows] for recorded steps
    W1, W2 = stepper.params()                         # [n_models, ...] CPU tensors
    stepper.state_dict() / stepper.load_state_dict()  # everything needed to continue bitwise

The loop here owns everything else: chunking, divergence, interruption, progress, the Result.
"""
from __future__ import annotations

import itertools
import math
import signal
import time
from typing import Optional, Sequence

import numpy as np
import torch

from .config import Config, field_names
from .data import make_dataset
from .errors import GrokfastError, check_choice
from .model import STAT_NAMES, evaluate
from .result import Result, ResultBatch

BACKENDS = ("auto", "triton", "torch", "reference")

# Fields every model of one launch must share: they fix the data, the shapes or the loop.
SHARED_FIELDS = ("p", "operation", "pairs", "encoding", "train_frac", "n_test", "split_seed",
                 "label_noise", "width", "activation", "loss", "loss_reduction", "loss_dtype",
                 "optimizer", "grad_filter", "filter_window", "filter_type", "filter_warmup",
                 "orthograd", "fixed_norm", "steps", "dtype", "device", "precision", "log_every",
                 "eval_every")


def stepper_class(backend: str, device: str):
    """The stepper class for a backend name ("auto": triton on CUDA, else torch)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        backend = "triton" if device.startswith("cuda") and _triton_usable() else "torch"
    if backend == "reference":
        from .reference import ReferenceStepper
        return ReferenceStepper
    if backend == "torch":
        from .torch_backend import TorchStepper
        return TorchStepper
    from .triton_backend import TritonStepper
    return TritonStepper


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def check_batch(configs: Sequence[Config]) -> None:
    """Models of one launch must agree on SHARED_FIELDS; say which field differs and what to do."""
    first = configs[0]
    for c in configs[1:]:
        for name in SHARED_FIELDS:
            if getattr(c, name) != getattr(first, name):
                raise GrokfastError(
                    f"models of one launch must share {name!r} ({getattr(first, name)!r} vs "
                    f"{getattr(c, name)!r}); run separate launches for different {name}")


def train(config: Config, seeds=None, *, backend: str = "auto", out=None, progress: bool = False,
          handle_signals: bool = False, chunk_steps: Optional[int] = None, observers=()):
    """Train `config` (or one model per seed in `seeds`, in one launch) and return the Result.

    backend: "auto" (triton on CUDA, else torch), "triton", "torch" or "reference" (plain autograd
    and torch.optim; grokfast.reference.train). All return the same Result with the same history.
    seeds: None for one model → Result; an iterable → ResultBatch, model i with seed seeds[i].
    out: directory to save into (one run, or model_000/, model_001/, … for a batch).
    progress: show a progress bar. handle_signals: Ctrl-C / SIGTERM stop after the current chunk and
    keep everything (the CLI sets this). observers: read-only hooks on θ at chosen steps (see run).
    """
    if not isinstance(config, Config):
        raise GrokfastError(f"train() needs a grokfast.Config, got {type(config).__name__}; "
                            f"use Config.preset('paper-real') or Config(...)")
    if seeds is None:
        configs = [config]
    else:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise GrokfastError("seeds is empty: pass at least one seed, e.g. seeds=range(4)")
        configs = [config.replace(seed=s) for s in seeds]
    results = run(configs, backend=backend, progress=progress, handle_signals=handle_signals,
                  chunk_steps=chunk_steps, observers=observers)
    if seeds is None:
        if out is not None:
            results[0].save(out)
        return results[0]
    batch = ResultBatch(results)
    if out is not None:
        batch.save(out)
    return batch


def sweep(config: Config, *, backend: str = "auto", out=None, progress: bool = False,
          **axes) -> ResultBatch:
    """Every combination of the given field values, run as one batch.

    Example: sweep(cfg, seed=range(4), weight_decay=[1e-4, 3e-4], lr=[0.5, 1.0]) → 16 models in
    itertools.product order (first axis slowest). Fields in SHARED_FIELDS cannot be swept together.
    """
    valid = field_names()
    for name in axes:
        if name not in valid:
            from .errors import closest
            raise GrokfastError(f"sweep axis {name!r} is not a config field{closest(name, valid)}")
        if name in SHARED_FIELDS:
            raise GrokfastError(f"{name!r} changes shapes or data and cannot vary within one launch; "
                                f"call sweep once per {name}")
    names = list(axes)
    values = [list(v) if not isinstance(v, (str, bytes)) else [v] for v in axes.values()]
    configs = [config.replace(**dict(zip(names, combo))) for combo in itertools.product(*values)]
    if not configs:
        raise GrokfastError("sweep has no combination: every axis needs at least one value")
    batch = ResultBatch(run(configs, backend=backend, progress=progress))
    if out is not None:
        batch.save(out)
    return batch


class _StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the loop to stop after the current chunk."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run(configs: Sequence[Config], *, backend: str = "auto", progress: bool = False,
        handle_signals: bool = False, chunk_steps: Optional[int] = None,
        observers: Sequence = ()) -> list[Result]:
    """The training loop over a batch of configs sharing SHARED_FIELDS; one Result per config.

    observers: objects with ``pause_steps(steps) -> iterable of int`` (steps s at which the loop must
    stop to look at θ_s), ``observe(step, W1, W2)`` (CPU copies, [n_models, ...]) and
    ``extras() -> list of dict`` (one dict of arrays per model, stored in Result.extras). They only read
    the parameters: a run with observers is bitwise equal to one without.
    """
    configs = list(configs)
    check_batch(configs)
    first = configs[0]
    device = torch.device(first.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrokfastError(f"device={first.device!r} but CUDA is not available here; "
                            f"use --set device=cpu")
    cls = stepper_class(backend, first.device)
    data = make_dataset(first)
    stepper = cls(configs, data, device)
    M, steps, log_every = len(configs), first.steps, first.log_every
    chunk = chunk_steps or getattr(stepper, "preferred_chunk", 1000)
    chunk = max(log_every, -(-chunk // log_every) * log_every)

    pauses = sorted({int(s) for ob in observers for s in ob.pause_steps(steps) if 0 <= s <= steps})
    pieces: list[dict] = []
    n_rows = np.zeros(M, dtype=np.int64)          # recorded rows kept per model
    active = np.ones(M, dtype=bool)
    diverged: list[Optional[str]] = [None] * M
    steps_done = np.zeros(M, dtype=np.int64)
    bar = _progress_bar(steps, M) if progress else None
    stop = _StopRequest() if handle_signals else None
    interrupted = False
    t0 = time.perf_counter()
    step = 0
    try:
        if stop:
            stop.__enter__()
        while step < steps and active.any():
            if pauses and pauses[0] == step:
                _observe(observers, step, stepper)
                pauses.pop(0)
            n = min(chunk, steps - step, *(q - step for q in pauses[:1]))
            rows = stepper.advance(step, n, active.copy())
            loss = rows["train_loss"]
            for i in np.nonzero(active)[0]:
                bad = np.nonzero(~np.isfinite(loss[i]))[0]
                keep = bad[0] if len(bad) else loss.shape[1]
                n_rows[i] += keep
                steps_done[i] = step + n
                if len(bad):
                    s = int(rows["step"][i, bad[0]])
                    diverged[i] = (f"non-finite train loss at step {s} (seed {configs[i].seed}); "
                                   f"history before it is kept. Lower lr (now {configs[i].lr:g}) "
                                   f"or use loss_reduction='mean'")
                    steps_done[i] = s
                    active[i] = False
            pieces.append(rows)
            step += n
            if bar is not None:
                _update_bar(bar, n, rows, active)
            if stop is not None and stop.requested:
                interrupted = step < steps
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if stop:
            stop.__exit__()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if pauses and pauses[0] == step and not interrupted:
        _observe(observers, step, stepper)
    extras = [dict() for _ in configs]
    for ob in observers:
        for i, e in enumerate(ob.extras()):
            extras[i].update(e)

    W1, W2 = stepper.params()
    results = []
    for i, c in enumerate(configs):
        hist = {k: np.concatenate([pc[k][i] for pc in pieces])[: n_rows[i]] if pieces
                else np.zeros(0) for k in STAT_NAMES}
        params = {"W1": W1[i], "W2": W2[i]}
        final = {}
        if torch.isfinite(W1[i]).all() and torch.isfinite(W2[i]).all():
            final = evaluate(c, data, W1[i], W2[i])
            final["norm"] = float(torch.sqrt(W1[i].double().pow(2).sum() + W2[i].double().pow(2).sum()))
        results.append(Result(config=c, history=hist, params=params, backend=stepper.backend,
                              wall_time=wall, steps_done=int(steps_done[i]), diverged=diverged[i],
                              interrupted=interrupted, final=final, extras=extras[i]))
    return results


def _observe(observers, step: int, stepper) -> None:
    W1, W2 = stepper.params()
    for ob in observers:
        ob.observe(step, W1, W2)


def _progress_bar(steps: int, n_models: int):
    from tqdm.auto import tqdm
    return tqdm(total=steps, unit="step", dynamic_ncols=True, smoothing=0.1,
                desc=f"{n_models} models" if n_models > 1 else "train")


def _span(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "-"
    return f"{v[0]:.3f}" if v.size == 1 else f"{v.min():.2f}–{v.max():.2f}"


def _update_bar(bar, n: int, rows: dict, active: np.ndarray) -> None:
    def last(name):
        vals = []
        for i in range(rows[name].shape[0]):
            ok = np.nonzero(np.isfinite(rows[name][i]))[0]
            vals.append(rows[name][i, ok[-1]] if len(ok) else np.nan)
        return np.asarray(vals)
    bar.set_postfix_str(f"train {_span(last('train_acc'))} test {_span(last('test_acc'))} "
                        f"‖θ‖ {_span(last('norm'))}", refresh=False)
    bar.update(n)
