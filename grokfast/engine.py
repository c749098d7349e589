"""`grokfast.train` and `grokfast.sweep`: config → data → backend stepper → history → Result.

A backend is a *stepper* over a batch of models that share every shape; the contract it keeps
(advance, params, state_dict, preferred_chunk) is grokfast.stepper.

The loop here owns everything else: chunking, divergence, early stop, interruption, streaming
the history and checkpoints to the run directory, NVTX ranges and the profiler window, progress,
the Result.
"""
from __future__ import annotations

import itertools
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .config import Config, field_names
from .data import make_dataset
from .errors import GrokfastError, check_choice
from .history import (HISTORY_DIR, RUN_FILE, RUN_FORMAT, EventLog, HistoryWriter, LazyHistory,
                      atomic_json, atomic_write, model_dirs, read_run, sync_dir, truncate_history)
from .model import STAT_NAMES, evaluate
from .profiling import nvtx_range, profiler_start, profiler_stop
from .result import Result, ResultBatch, first_step
from .stepper import BACKENDS, SHARED_FIELDS, Stepper, check_batch, stepper_class  # noqa: F401 (re-exported)

log = logging.getLogger("grokfast")

STOP_AT = (None, "none", "grok")
DEFAULT_CHECKPOINT_SECONDS = 300.0


def train(config: Optional[Config], seeds=None, *, backend: str = "auto", out=None,
          progress: bool = False, handle_signals: bool = False, chunk_steps: Optional[int] = None,
          observers=(), resume=None, checkpoint_every: Optional[int] = None,
          checkpoint_seconds: Optional[float] = None, stop_at: Optional[str] = None,
          stop_patience: Optional[int] = None, max_steps: Optional[int] = None,
          max_time: Optional[float] = None, profile_steps=None):
    """Train `config` (or one model per seed in `seeds`, in one launch) and return the Result.

    backend: "auto" (triton on CUDA, else torch), "triton", "torch" or "reference" (plain autograd
    and torch.optim; grokfast.reference.train). All return the same Result with the same history.
    seeds: None for one model → Result; an iterable → ResultBatch, model i with seed seeds[i].
    out: run directory. The history streams there in chunks while training, with an event log
    (events.jsonl) and checkpoints; the Result is saved there at the end (one run, or model_000/,
    model_001/, … for a batch). See grokfast.history for the layout.
    progress: show a progress bar. handle_signals: Ctrl-C / SIGTERM stop after the current chunk,
    write a checkpoint and keep everything (the CLI sets this). observers: read-only hooks on θ at
    chosen steps (see run).

    Long runs (see run for the details):
    resume: a run directory to continue from its checkpoint, bitwise equal to the uninterrupted run
    on the same backend. config may be None (the saved one); otherwise it must equal the saved
    config except `steps`, which may grow. backend "auto" means the checkpoint's backend.
    checkpoint_every / checkpoint_seconds: checkpoint every N steps and/or S seconds (default: every
    300 s), besides at the end and on Ctrl-C / SIGTERM; needs out.
    stop_at="grok": stop each model once its test accuracy has been ≥ config.grok_threshold for
    stop_patience (default 3) consecutive evaluations. max_steps / max_time: stop this call at that
    step / after that many seconds (resumable). profile_steps=(A, B): CUDA profiler window.
    """
    if resume is not None:
        from .checkpoint import load_checkpoint
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise GrokfastError(f"resume={str(resume)!r} continues that directory; out="
                                f"{str(out)!r} must be the same directory or left out")
        out = resume
        resume = load_checkpoint(Path(resume))
        configs, single = _resume_configs(resume, config, seeds)
    else:
        if not isinstance(config, Config):
            raise GrokfastError(f"train() needs a grokfast.Config, got {type(config).__name__}; "
                                f"use Config.preset('paper-real') or Config(...)")
        single = seeds is None
        if single:
            configs = [config]
        else:
            seeds = [int(s) for s in seeds]
            if not seeds:
                raise GrokfastError("seeds is empty: pass at least one seed, e.g. seeds=range(4)")
            configs = [config.replace(seed=s) for s in seeds]
    results = run(configs, backend=backend, progress=progress, handle_signals=handle_signals,
                  chunk_steps=chunk_steps, observers=observers, out=out, single=single,
                  resume=resume, checkpoint_every=checkpoint_every,
                  checkpoint_seconds=checkpoint_seconds, stop_at=stop_at,
                  stop_patience=stop_patience, max_steps=max_steps, max_time=max_time,
                  profile_steps=profile_steps)
    return results[0] if single else ResultBatch(results)


def _resume_configs(ckpt: dict, config: Optional[Config], seeds) -> tuple[list, bool]:
    """The configs a resume runs: the saved ones, or `config` (per saved seed) when it matches."""
    saved = [Config.from_dict(d) for d in ckpt["configs"]]
    single = ckpt["layout"] == "single"
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if single or seeds != [c.seed for c in saved]:
            have = "one model" if single else f"seeds {[c.seed for c in saved]}"
            raise GrokfastError(f"the checkpoint holds {have}, not seeds {seeds}: resume with the "
                                f"same seeds (or leave seeds out)")
    if config is None:
        return saved, single
    if not isinstance(config, Config):
        raise GrokfastError(f"train() needs a grokfast.Config or None, got {type(config).__name__}")
    configs = [config] if single else [config.replace(seed=c.seed) for c in saved]
    check_resumable(ckpt, configs)
    return configs, single


def check_resumable(ckpt: dict, configs: Sequence[Config]) -> None:
    """GrokfastError unless `configs` are the checkpoint's, but for steps (≥ its step)."""
    saved = [Config.from_dict(d) for d in ckpt["configs"]]
    if len(saved) != len(configs):
        raise GrokfastError(f"the checkpoint holds {len(saved)} models, not {len(configs)}: resume "
                            f"the launch as it was saved")
    for a, b in zip(saved, configs):
        diffs = [f"{f}={getattr(b, f)!r} (checkpoint: {getattr(a, f)!r})" for f in field_names()
                 if f != "steps" and getattr(a, f) != getattr(b, f)]
        if diffs:
            raise GrokfastError(
                f"cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}. "
                f"Resuming may only change steps: pass config=None (or `grokfast train --resume "
                f"DIR` without other --set) to continue as saved, or start a new run elsewhere")
        if b.steps < ckpt["step"]:
            raise GrokfastError(f"steps={b.steps} is below the checkpoint's step {ckpt['step']}: "
                                f"resuming can only keep or extend steps")


def sweep(config: Config, *, backend: str = "auto", out=None, progress: bool = False,
          **axes) -> ResultBatch:
    """Every combination of the given field values, run as one batch.

    Example: sweep(cfg, seed=range(4), weight_decay=[1e-4, 3e-4], lr=[0.5, 1.0]) → 16 models in
    itertools.product order (first axis slowest). Fields in SHARED_FIELDS cannot be swept together.
    out: run directory, streamed and saved as train's (model_000/, model_001/, …).
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
    return ResultBatch(run(configs, backend=backend, progress=progress, out=out, single=False))


class _StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the loop to stop after the current chunk."""

    def __init__(self):
        self.requested = False
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signal.Signals(signum).name
        outer = getattr(self._old.get(signum), "__self__", None)
        if isinstance(outer, _StopRequest) and not outer.requested:
            outer._handle(signum, frame)  # an enclosing request (a sweep's) hears it too

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


@dataclass
class _Progress:
    """The loop's own state, per model where an array; a checkpoint carries it (to_dict)."""

    step: int
    active: np.ndarray              # bool [M]: still being stepped
    steps_done: np.ndarray          # int64 [M]
    streak: np.ndarray              # int64 [M]: consecutive evaluations ≥ grok_threshold
    grok_met: np.ndarray            # int64 [M]: step completing the stop_at streak, −1 before
    diverged: list                  # message or None, per model
    stop_reason: list               # "grok" / "diverged" / None, per model
    memorization_step: list
    grok_step: list
    wall: float = 0.0               # seconds trained by earlier calls (resumed runs)

    @classmethod
    def start(cls, M: int) -> "_Progress":
        return cls(0, np.ones(M, bool), np.zeros(M, np.int64), np.zeros(M, np.int64),
                   np.full(M, -1, np.int64), [None] * M, [None] * M, [None] * M, [None] * M)

    def to_dict(self, wall: float) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["wall"] = wall
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "_Progress":
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def _rows_before(step: int, log_every: int) -> int:
    """Recorded rows of steps 0 … step−1 (the history position at `step`)."""
    return -(-step // log_every)


def _check_run_options(stop_at, stop_patience, max_steps, max_time, checkpoint_every,
                       checkpoint_seconds, profile_steps, out, steps) -> Optional[tuple]:
    check_choice("stop_at", stop_at, STOP_AT)

    def positive(name, v, kind=int):
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0
                              or (kind is int and int(v) != v) or not math.isfinite(v)):
            raise GrokfastError(f"{name}={v!r} must be a positive {'integer' if kind is int else 'number'}")

    positive("stop_patience", stop_patience)
    positive("max_time", max_time, float)
    positive("checkpoint_every", checkpoint_every)
    positive("checkpoint_seconds", checkpoint_seconds, float)
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 0):
        raise GrokfastError(f"max_steps={max_steps!r} must be an integer ≥ 0")
    if out is None and (checkpoint_every or checkpoint_seconds):
        raise GrokfastError("checkpoints need a run directory: pass out=DIR (--out DIR)")
    if profile_steps is None:
        return None
    try:
        a, b = (int(x) for x in profile_steps)
    except (TypeError, ValueError):
        raise GrokfastError(f"profile_steps={profile_steps!r}: give two steps (A, B), A < B") from None
    if not 0 <= a < b:
        raise GrokfastError(f"profile_steps=({a}, {b}): need 0 ≤ A < B (steps A … B−1 are captured)")
    if a >= steps:
        raise GrokfastError(f"profile_steps=({a}, {b}) starts after the run's {steps} steps")
    return a, b


def run(configs: Sequence[Config], *, backend: str = "auto", progress: bool = False,
        handle_signals: bool = False, chunk_steps: Optional[int] = None,
        observers: Sequence = (), out=None, single: Optional[bool] = None, resume=None,
        checkpoint_every: Optional[int] = None, checkpoint_seconds: Optional[float] = None,
        stop_at: Optional[str] = None, stop_patience: Optional[int] = None,
        max_steps: Optional[int] = None, max_time: Optional[float] = None,
        profile_steps=None, on_chunk=None, curves: bool = True) -> list[Result]:
    """The training loop over a batch of configs sharing SHARED_FIELDS; one Result per config.

    observers: objects with ``pause_steps(steps) -> iterable of int`` (steps s at which the loop must
    stop to look at θ_s), ``observe(step, W1, W2)`` (CPU copies, [n_models, ...]) and
    ``extras() -> list of dict`` (one dict of arrays per model, stored in Result.extras). They only read
    the parameters: a run with observers is bitwise equal to one without. A resumed run shows them
    only the steps it runs itself.

    out: run directory (grokfast.history): the history streams there in chunks instead of staying
    in memory, the results are saved there at the end, and checkpoints (grokfast.checkpoint) are
    written every `checkpoint_every` steps and/or `checkpoint_seconds` seconds (default 300 s),
    at the end, and when Ctrl-C / SIGTERM, max_steps or max_time stop the run. single: one model
    saved in out itself (train without seeds) rather than in out/model_000, …
    resume: a checkpoint (dict from grokfast.checkpoint.load_checkpoint, or its run directory) to
    continue from; out defaults to its directory.

    The loop advances in chunks of `chunk_steps` (default the stepper's preferred_chunk), cut also at
    observer pauses, checkpoint_every multiples, max_steps and the profile window; a chunking never
    changes the results. Between chunks it stops models that diverged (non-finite training loss:
    history kept up to it, message in Result.diverged) and, with stop_at="grok", models whose test
    accuracy held ≥ grok_threshold for stop_patience consecutive evaluations — at the next multiple
    of the chunk size, so the stop step does not depend on where a resume or checkpoint cut the run.
    max_steps / max_time end this call at that step / after that many seconds; the run directory
    then resumes like an interrupted run. profile_steps=(A, B): cudaProfilerStart before step A,
    cudaProfilerStop after step B−1 (chunks cut at A and B; without CUDA a logged no-op).
    on_chunk: called after every chunk as on_chunk(steps, models stepped) (the sweep's progress
    bar). curves=False: no curves.png per model (sweeps).
    """
    from .checkpoint import load_checkpoint, set_rng_state

    configs = list(configs)
    check_batch(configs)
    first = configs[0]
    M, steps, log_every = len(configs), first.steps, first.log_every
    window = _check_run_options(stop_at, stop_patience, max_steps, max_time, checkpoint_every,
                                checkpoint_seconds, profile_steps, out, steps)
    if resume is not None and not isinstance(resume, dict):
        out = resume if out is None else out
        resume = load_checkpoint(Path(resume))
    if resume is not None:
        if out is None:
            raise GrokfastError("resume needs its run directory: pass out=DIR")
        if backend == "auto":
            backend = resume["backend"]
        elif backend != resume["backend"]:
            raise GrokfastError(f"the checkpoint was written by backend {resume['backend']!r}; "
                                f"resuming on {backend!r} would not continue it bitwise: resume "
                                f"with backend={resume['backend']!r} (or 'auto')")
        check_resumable(resume, configs)
        stop_at = resume["stop_at"] if stop_at is None else stop_at
        stop_patience = stop_patience or resume["stop_patience"]
        single = resume["layout"] == "single"
    stop_at = None if stop_at == "none" else stop_at
    stop_patience = int(stop_patience or 3)
    if single is None:
        single = M == 1
    if out is not None and checkpoint_every is None and checkpoint_seconds is None:
        checkpoint_seconds = DEFAULT_CHECKPOINT_SECONDS

    device = torch.device(first.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrokfastError(f"device={first.device!r} but CUDA is not available here; "
                            f"use --set device=cpu")
    cls = stepper_class(backend, first.device)
    data = make_dataset(first)
    stepper = cls(configs, data, device)
    chunk = chunk_steps or (resume or {}).get("chunk") or stepper.preferred_chunk
    chunk = max(log_every, -(-chunk // log_every) * log_every)
    if resume is not None:
        stepper.load_state_dict(resume["stepper"])
        set_rng_state(resume["rng"])
        prog = _Progress.from_dict(resume["launch"])
    else:
        prog = _Progress.start(M)
    start_step = prog.step

    rundir = _RunDir(Path(out), configs, single, stepper.backend, resume) if out is not None else None
    pieces: list[tuple[dict, np.ndarray]] = []    # in-memory history when not streaming
    pauses = sorted({int(s) for ob in observers for s in ob.pause_steps(steps)
                     if start_step <= s <= steps})
    limit = steps if max_steps is None else min(steps, max(max_steps, start_step))
    bar = _progress_bar(steps, M, start_step) if progress else None
    stop = _StopRequest() if handle_signals else None
    profiling_open = False
    reason = None            # why this call stopped before the end
    hard = False             # a second signal broke into a chunk
    t0 = last_checkpoint = time.perf_counter()

    def wall() -> float:
        return prog.wall + time.perf_counter() - t0

    def say(text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)  # with the bar, not among the results on stdout
        log.info(text)

    def profiler(open_: bool) -> None:
        nonlocal profiling_open
        profiling_open = open_
        called = profiler_start() if open_ else profiler_stop()
        name = "profile_start" if open_ else "profile_stop"
        api = "cudaProfilerStart" if open_ else "cudaProfilerStop"
        say(f"step {prog.step}: {api}" + ("" if called else " skipped (no CUDA: no-op)"))
        if rundir:
            rundir.event(name, prog.step, wall(), cuda=called)

    def checkpoint() -> None:
        nonlocal last_checkpoint
        with nvtx_range("checkpoint"):
            t = time.perf_counter()
            rundir.checkpoint(stepper, prog, configs, chunk, stop_at, stop_patience, wall(), log_every)
            last_checkpoint = time.perf_counter()
            rundir.event("checkpoint", prog.step, wall(), seconds=round(last_checkpoint - t, 6))

    if rundir:
        rundir.event("resumed" if resume is not None else "started", prog.step, wall(),
                     backend=stepper.backend, n_models=M, steps=steps,
                     seeds=[c.seed for c in configs], chunk=chunk)
    try:
        if stop:
            stop.__enter__()
        try:
            if start_step >= limit and start_step < steps:
                reason = "max_steps"
            while reason is None and prog.step < steps and prog.active.any():
                step = prog.step
                if pauses and pauses[0] == step:
                    _observe(observers, step, stepper)
                    pauses.pop(0)
                if window and not profiling_open and window[0] <= step < window[1]:
                    profiler(True)
                cuts = [steps, limit, (step // chunk + 1) * chunk, *pauses[:1]]
                if checkpoint_every and rundir:
                    cuts.append((step // checkpoint_every + 1) * checkpoint_every)
                if window:
                    cuts += [w for w in window if w > step]
                n = min(cuts) - step
                stepped = int(prog.active.sum())
                with nvtx_range("step"):
                    rows = stepper.advance(step, n, prog.active.copy())
                with nvtx_range("evaluation"):
                    n_valid, events = _digest(configs, rows, prog, step, n, stop_at, stop_patience)
                    prog.step = step + n
                    if stop_at and (prog.step % chunk == 0 or prog.step == steps):
                        events += _apply_grok_stops(configs, prog)
                with nvtx_range("logging"):
                    if rundir:
                        rundir.writer.append(rows, n_valid)
                    else:
                        pieces.append((rows, n_valid))
                    for name, fields_ in events:
                        if rundir:
                            rundir.event(name, fields_.pop("at", prog.step), wall(), **fields_)
                        if name in ("diverged", "stopped"):
                            say(f"model {fields_['model']} (seed {fields_['seed']}): {name}"
                                f" — {fields_.get('message') or fields_.get('reason')}")
                    if bar is not None:
                        _update_bar(bar, n, rows, prog)
                    if on_chunk is not None:
                        on_chunk(n, stepped)
                if window and profiling_open and prog.step >= window[1]:
                    profiler(False)
                if prog.step >= steps or not prog.active.any():
                    break
                if stop is not None and stop.requested:
                    reason = "signal"
                elif prog.step >= limit:
                    reason = "max_steps"
                elif max_time is not None and time.perf_counter() - t0 >= max_time:
                    reason = "max_time"
                elif rundir and ((checkpoint_every and prog.step % checkpoint_every == 0) or
                                 (checkpoint_seconds and
                                  time.perf_counter() - last_checkpoint >= checkpoint_seconds)):
                    checkpoint()
        except KeyboardInterrupt:
            hard = True
        if profiling_open:
            profiler(False)
        if rundir and hard:
            rundir.writer.flush()
            rundir.event("interrupted", prog.step, wall(), reason="second signal",
                         checkpoint="kept the last complete checkpoint")
            rundir.set_status("interrupted")
            rundir.close()
            raise KeyboardInterrupt
        if rundir:
            checkpoint()
    finally:
        if stop:
            stop.__exit__()
        if bar is not None:
            bar.close()
    interrupted = bool(hard or (reason is not None and prog.step < steps and prog.active.any()))
    if interrupted and reason is None:
        reason = "signal"
    elapsed = wall()
    if pauses and pauses[0] == prog.step and not interrupted:
        _observe(observers, prog.step, stepper)
    extras = [dict() for _ in configs]
    for ob in observers:
        for i, e in enumerate(ob.extras()):
            extras[i].update(e)

    W1, W2 = stepper.params()
    results = []
    for i, c in enumerate(configs):
        if rundir:
            hist = LazyHistory(rundir.launch, i)
        else:
            hist = {k: np.concatenate([rows[k][i, : nv[i]] for rows, nv in pieces]) if pieces
                    else np.zeros(0) for k in STAT_NAMES}
        params = {"W1": W1[i], "W2": W2[i]}
        final = {}
        if torch.isfinite(W1[i]).all() and torch.isfinite(W2[i]).all():
            with nvtx_range("evaluation"):
                final = evaluate(c, data, W1[i], W2[i])
            final["norm"] = float(torch.sqrt(W1[i].double().pow(2).sum() + W2[i].double().pow(2).sum()))
        why = prog.stop_reason[i] or (reason if interrupted and prog.active[i] else None)
        results.append(Result(config=c, history=hist, params=params, backend=stepper.backend,
                              wall_time=elapsed, steps_done=int(prog.steps_done[i]),
                              diverged=prog.diverged[i], interrupted=interrupted, final=final,
                              extras=extras[i], stop_reason=why,
                              milestones={"memorization_step": prog.memorization_step[i],
                                          "grok_step": prog.grok_step[i]}))
    if rundir:
        for r, m in zip(results, rundir.models):
            r.save(rundir.launch / m, curves=curves)
        done = [int(s) for s in prog.steps_done]
        if interrupted:
            rundir.event("interrupted", prog.step, elapsed, reason=reason, steps_done=done,
                         signal=stop.signal if stop and reason == "signal" else None)
        else:
            rundir.event("finished", prog.step, elapsed, steps_done=done,
                         stop_reasons=prog.stop_reason if any(prog.stop_reason) else None)
        rundir.set_status("interrupted" if interrupted else "finished")
        rundir.close()
    return results


def _digest(configs, rows: dict, prog: _Progress, step0: int, n: int, stop_at, patience: int):
    """Read one chunk's rows: divergence, milestones, stop_at streaks. Returns (n_valid [M], events)."""
    M = len(configs)
    n_rows = rows["step"].shape[1]
    n_valid = np.zeros(M, dtype=np.int64)
    events = []
    for i in np.nonzero(prog.active)[0]:
        c = configs[i]
        bad = np.nonzero(~np.isfinite(rows["train_loss"][i]))[0]
        keep = int(bad[0]) if len(bad) else n_rows
        n_valid[i] = keep
        prog.steps_done[i] = step0 + n
        h = {k: rows[k][i, :keep] for k in ("step", "train_acc", "test_acc")}
        for name, key, threshold in (("memorized", "train_acc", 1.0),
                                     ("grokked", "test_acc", c.grok_threshold)):
            attr = "memorization_step" if name == "memorized" else "grok_step"
            if getattr(prog, attr)[i] is None:
                s = first_step(h, key, threshold)
                if s is not None:
                    getattr(prog, attr)[i] = s
                    events.append((name, dict(at=s, model=int(i), seed=c.seed)))
        if stop_at == "grok" and prog.grok_met[i] < 0:
            evaluated = np.isfinite(h["test_acc"])
            ok = h["test_acc"][evaluated] >= c.grok_threshold
            if len(ok):
                idx = np.arange(len(ok))
                last_miss = np.maximum.accumulate(np.where(~ok, idx, -1))
                streak = np.where(last_miss < 0, idx + 1 + prog.streak[i], idx - last_miss)
                hit = np.nonzero(streak >= patience)[0]
                if len(hit):
                    prog.grok_met[i] = int(h["step"][evaluated][hit[0]])
                prog.streak[i] = streak[-1]
        if len(bad):
            s = int(rows["step"][i, bad[0]])
            prog.diverged[i] = (f"non-finite train loss at step {s} (seed {c.seed}); history before "
                                f"it is kept. Lower lr (now {c.lr:g}) or use loss_reduction='mean'")
            prog.steps_done[i] = s
            prog.active[i] = False
            prog.stop_reason[i] = "diverged"
            events.append(("diverged", dict(at=s, model=int(i), seed=c.seed,
                                            message=prog.diverged[i])))
    return n_valid, events


def _apply_grok_stops(configs, prog: _Progress) -> list:
    events = []
    for i in np.nonzero(prog.active & (prog.grok_met >= 0))[0]:
        prog.active[i] = False
        prog.stop_reason[i] = "grok"
        prog.steps_done[i] = prog.step
        events.append(("stopped", dict(model=int(i), seed=configs[i].seed, reason="grok",
                                       condition_met_at=int(prog.grok_met[i]))))
    return events


class _RunDir:
    """The run directory of a streaming launch: model directories, run.json, history, events."""

    def __init__(self, launch: Path, configs: Sequence[Config], single: bool, backend: str,
                 resume: Optional[dict]):
        self.launch = launch
        M = len(configs)
        if resume is None:
            taken = [n for n in (RUN_FILE, "checkpoint.pt", HISTORY_DIR) if (launch / n).exists()]
            if taken:
                raise GrokfastError(f"{launch} already holds a run ({taken[0]}): continue it with "
                                    f"--resume {launch} (train(..., resume=DIR)) or choose another "
                                    f"--out directory")
            launch.mkdir(parents=True, exist_ok=True)
            self.models = model_dirs(launch, M, single)
            row0 = 0
        else:
            self.models = read_run(launch)["models"]
            row0 = int(resume["rows"])
            truncate_history(launch, row0)
            for tmp in [*launch.glob(".*.tmp"), *(launch / HISTORY_DIR).glob(".*.tmp")]:
                tmp.unlink()  # left by a process killed mid-write
        for c, m in zip(configs, self.models):
            d = launch / m
            d.mkdir(parents=True, exist_ok=True)
            for stale in ("result.json", "params.npz", "history.npz", "extras.npz", "curves.png",
                          "curves.error.txt"):
                (d / stale).unlink(missing_ok=True)
            atomic_write(d / "config.json", lambda f, c=c: f.write(c.to_json().encode()))
        self.run = dict(format=RUN_FORMAT, n_models=M, models=self.models, backend=backend,
                        seeds=[c.seed for c in configs], steps=configs[0].steps,
                        log_every=configs[0].log_every, layout="single" if single else "batch",
                        status="running")
        atomic_json(launch / RUN_FILE, self.run)
        self.writer = HistoryWriter(launch, M, row0=row0)
        self.events = EventLog(launch)

    def event(self, name: str, step: int, wall: float, **fields_) -> None:
        self.events.emit(name, step, wall, **{k: v for k, v in fields_.items() if v is not None})

    def checkpoint(self, stepper, prog: _Progress, configs, chunk: int, stop_at, patience: int,
                   wall: float, log_every: int) -> None:
        from .checkpoint import rng_state, save_checkpoint
        self.writer.flush()
        assert self.writer.rows == _rows_before(prog.step, log_every), "history position off"
        sync_dir(self.writer.dir)
        self.events.sync()
        save_checkpoint(self.launch, dict(
            backend=stepper.backend, layout=self.run["layout"],
            configs=[c.to_dict() for c in configs], chunk=chunk, stop_at=stop_at,
            stop_patience=patience, step=prog.step, rows=self.writer.rows,
            launch=prog.to_dict(wall), stepper=stepper.state_dict(), params=stepper.params(),
            rng=rng_state(), time=time.time()))

    def set_status(self, status: str) -> None:
        self.run["status"] = status
        atomic_json(self.launch / RUN_FILE, self.run)

    def close(self) -> None:
        self.writer.flush()
        self.events.close()


def _observe(observers, step: int, stepper) -> None:
    W1, W2 = stepper.params()
    for ob in observers:
        ob.observe(step, W1, W2)


def _progress_bar(steps: int, n_models: int, initial: int = 0):
    """steps/s and ETA come from tqdm; the postfix adds accuracies and ‖θ‖ (ranges for a batch)."""
    from tqdm.auto import tqdm
    return tqdm(total=steps, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1,
                desc=f"{n_models} models" if n_models > 1 else "train")


def _span(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "-"
    return f"{v[0]:.3f}" if v.size == 1 else f"{v.min():.2f}–{v.max():.2f}"


def _update_bar(bar, n: int, rows: dict, prog: _Progress) -> None:
    def last(name):
        vals = []
        for i in range(rows[name].shape[0]):
            ok = np.nonzero(np.isfinite(rows[name][i]))[0]
            vals.append(rows[name][i, ok[-1]] if len(ok) else np.nan)
        return np.asarray(vals)
    text = (f"train {_span(last('train_acc'))} test {_span(last('test_acc'))} "
            f"‖θ‖ {_span(last('norm'))}")
    M = len(prog.active)
    if M > 1:
        grokked = sum(s is not None for s in prog.grok_step)
        text += f" grokked {grokked}/{M}"
        if not prog.active.all():
            text += f" active {int(prog.active.sum())}/{M}"
    bar.set_postfix_str(text, refresh=False)
    bar.update(n)
