"""`grokfast.train` and `engine.run`: config → data → backend stepper → history → Result.

A launch is one `run` over a batch of models that share every shape; a backend steps them
(the stepper contract: grokfast.backends.base). The launch here reads top-down: open (options,
resume, stepper, chunk size, sink), loop over chunks, finish (Results). Its parts live beside it:
options.py (the run options), resume.py (what a resume continues), chunks.py (the chunk plan),
monitor.py (divergence, milestones, grok stops, the progress bar), sink.py (run directory or
memory), signals.py (Ctrl-C / SIGTERM); the files themselves are grokfast.store's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.backends.base import Stepper, check_batch
from grokfast.backends.registry import make_stepper
from grokfast.config import Config
from grokfast.data import make_dataset
from grokfast.errors import GrokfastError
from grokfast.inputs import check_seeds
from grokfast.numerics import param_norm, portable
from grokfast.model import evaluate
from grokfast.profiling import nvtx_range, profiler_start, profiler_stop
from grokfast.store.checkpoint import set_rng_state
from grokfast.store.ownership import owned
from grokfast.store.result import Result, ResultBatch

from .chunks import chunk_size, next_cut
from .monitor import (
    Progress,
    apply_grok_stops,
    check_params,
    digest,
    final_divergence,
    progress_bar,
    update_bar,
)
from .options import FIRST_CHECKPOINT_SECONDS, RunOptions
from .resume import resume_dir, resume_plan
from .signals import StopRequest
from .sink import MemorySink, RunDirSink

log = logging.getLogger("grokfast")


def train(config: Optional[Config], seeds=None, **options):
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

    options (keywords, the fields of grokfast.options.RunOptions; an unknown one is a GrokfastError
    naming the closest): backend, out, progress, handle_signals, chunk_steps, observers, resume,
    checkpoint_every, checkpoint_seconds, stop_at, stop_patience, max_steps, max_time,
    profile_steps, tensorboard, loggers (as described here and in run).
    tensorboard=True: TensorBoard event files in out/tensorboard/, live (grokfast.tracking.
    tensorboard; needs tensorboardX). loggers: more trackers (grokfast.tracking.Logger); both
    need out.

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
    opts = RunOptions.of("train", options, internal=("single", "on_chunk", "curves"))
    resume, out = opts.resume, opts.out
    if resume is None:  # everything checked before the directory is touched
        if not isinstance(config, Config):
            raise GrokfastError(f"train() needs a grokfast.Config, got {type(config).__name__}; "
                                f"use Config.preset('paper-real') or Config(...)")
        single = seeds is None
        configs = [config] if single else [config.replace(seed=s) for s in check_seeds(seeds)]
        opts.check(config.steps)
    else:
        out = resume_dir(resume, out)
    with owned(out, create=resume is None, new=resume is None):
        if resume is not None:  # read with the directory held: nobody else writes it meanwhile
            configs, single, resume = resume_plan(resume, out, config, seeds)
        results = _run(configs, dataclasses.replace(opts, out=out, resume=resume, single=single))
    return results[0] if single else ResultBatch(results)


def run(configs: Sequence[Config], **options) -> list[Result]:
    """The training loop over a batch of configs sharing SHARED_FIELDS; one Result per config.

    options: the fields of grokfast.options.RunOptions, as keywords (train's, plus single, on_chunk
    and curves below); an unknown one is a GrokfastError naming the closest.

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
    return _run(configs, RunOptions.of("run", options))


def _run(configs: Sequence[Config], opts: RunOptions) -> list[Result]:
    configs = list(configs)
    check_batch(configs)
    opts = dataclasses.replace(opts, observers=tuple(opts.observers))
    opts.check(configs[0].steps)
    out = opts.out if opts.out is not None or isinstance(opts.resume, dict) else opts.resume
    with owned(out, create=opts.resume is None, new=opts.resume is None):
        return _Launch(configs, opts.resolved(configs)).run()


class _Launch:
    """One run call: opens (stepper, resume, chunk size, sink), loops over chunks, finishes."""

    def __init__(self, configs: list, opts: RunOptions):
        first = configs[0]
        self.configs, self.opts, self.M = configs, opts, len(configs)
        self.steps, self.log_every = first.steps, first.log_every
        device = torch.device(first.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise GrokfastError(f"device={first.device!r} but CUDA is not available here; "
                                f"use --set device=cpu")
        try:
            self.data = make_dataset(first)
            self.stepper: Stepper = make_stepper(opts.backend, configs, self.data, device)
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                raise
            raise GrokfastError(f"not enough memory for {self.M} model(s) of width {first.width} "
                                f"(p={first.p}, {first.dtype}) on {first.device}: lower width or "
                                f"the number of seeds ({type(e).__name__}: {str(e)[:120]})") from None
        resume = opts.resume
        self.chunk = chunk_size(opts.chunk_steps or (resume or {}).get("chunk")
                                or self.stepper.preferred_chunk, self.log_every)
        if resume is not None:
            self.stepper.load_state_dict(resume["stepper"])
            set_rng_state(resume["rng"])
            self.prog = Progress.from_dict(resume["launch"])
        else:
            self.prog = Progress.start(self.M)
        self.start_step = self.prog.step
        self.sink = (RunDirSink(Path(opts.out), configs, opts.single, self.stepper.backend, resume,
                                opts.loggers)
                     if opts.out is not None else MemorySink())
        self.pauses = sorted({int(s) for ob in opts.observers for s in ob.pause_steps(self.steps)
                              if self.start_step <= s <= self.steps})
        self.limit = (self.steps if opts.max_steps is None
                      else min(self.steps, max(opts.max_steps, self.start_step)))
        self.bar = progress_bar(self.steps, self.M, self.start_step) if opts.progress else None
        self.stop = StopRequest() if opts.handle_signals else None
        self.profiling_open = False
        self.reason = None       # why this call stopped before the end
        self.hard = False        # a second signal broke into a chunk
        self.t0 = self.last_checkpoint = time.perf_counter()
        seconds = opts.checkpoint_seconds
        self.first_checkpoint = None if seconds is None else min(seconds, FIRST_CHECKPOINT_SECONDS)

    def run(self) -> list[Result]:
        self.sink.event("resumed" if self.opts.resume is not None else "started", self.prog.step,
                        self.wall(), backend=self.stepper.backend, n_models=self.M,
                        steps=self.steps, seeds=[c.seed for c in self.configs], chunk=self.chunk)
        with contextlib.ExitStack() as stack:
            if self.bar is not None:
                stack.callback(self.bar.close)
            if self.stop is not None:
                stack.enter_context(self.stop)
            try:
                self.loop()
            except KeyboardInterrupt:
                self.hard = True
            except OSError as e:  # disk full, read-only, …: keep a truthful, resumable directory
                self.sink.os_failure(self.prog.step, self.wall(), e)
                raise
            if self.profiling_open:
                self.profiler(False)
            if self.hard and self.sink.hard_stop(self.prog.step, self.wall()):
                raise KeyboardInterrupt
            self.checkpoint()
        return self.finish()

    def loop(self) -> None:
        prog = self.prog
        if self.limit <= self.start_step < self.steps:
            self.reason = "max_steps"
        while self.reason is None and prog.step < self.steps and prog.active.any():
            self.advance_chunk()
            if prog.step >= self.steps or not prog.active.any():
                break
            self.reason = self.stop_reason()
            if self.reason is None and self.checkpoint_due():
                self.checkpoint()

    def advance_chunk(self) -> None:
        """One stepper.advance, its rows read (monitor), recorded (sink) and shown."""
        prog, opts, window, step = self.prog, self.opts, self.opts.window, self.prog.step
        if self.pauses and self.pauses[0] == step:
            _observe(opts.observers, step, self.stepper)
            self.pauses.pop(0)
        if window and not self.profiling_open and window[0] <= step < window[1]:
            self.profiler(True)
        n = next_cut(step, steps=self.steps, limit=self.limit, chunk=self.chunk,
                     pauses=self.pauses, checkpoint_every=opts.checkpoint_every, window=window) - step
        stepped = int(prog.active.sum())
        with nvtx_range("step"):
            rows = self.stepper.advance(step, n, prog.active.copy())
        with nvtx_range("evaluation"):
            n_valid, events = digest(self.configs, rows, prog, step, n, opts.stop_at,
                                     opts.stop_patience)
            events += check_params(self.configs, self.stepper, prog, step, n, self.log_every)
            prog.step = step + n
            if opts.stop_at and (prog.step % self.chunk == 0 or prog.step == self.steps):
                events += apply_grok_stops(self.configs, prog)
        with nvtx_range("logging"):
            self.sink.append(rows, n_valid)
            self.report(events)
            if self.bar is not None:
                update_bar(self.bar, n, rows, prog)
            if opts.on_chunk is not None:
                opts.on_chunk(n, stepped)
        if window and self.profiling_open and prog.step >= window[1]:
            self.profiler(False)

    def report(self, events: list) -> None:
        for name, fields_ in events:
            self.sink.event(name, fields_.pop("at", self.prog.step), self.wall(), **fields_)
            if name in ("diverged", "stopped"):
                self.say(f"model {fields_['model']} (seed {fields_['seed']}): {name}"
                         f" — {fields_.get('message') or fields_.get('reason')}")

    def stop_reason(self) -> Optional[str]:
        """Why this call stops after the chunk just run (None: go on)."""
        if self.stop is not None and self.stop.requested:
            return "signal"
        if self.prog.step >= self.limit:
            return "max_steps"
        if self.opts.max_time is not None and time.perf_counter() - self.t0 >= self.opts.max_time:
            return "max_time"
        return None

    def checkpoint_due(self) -> bool:
        every, seconds = self.opts.checkpoint_every, self.opts.checkpoint_seconds
        if self.first_checkpoint is not None and self.last_checkpoint == self.t0:
            seconds = self.first_checkpoint  # the first one early: a minute of work is never lost
        return bool((every and self.prog.step % every == 0) or
                    (seconds and time.perf_counter() - self.last_checkpoint >= seconds))

    def checkpoint(self) -> None:
        o = self.opts
        self.last_checkpoint = self.sink.checkpoint(self.stepper, self.prog, self.configs,
                                                    self.chunk, o.stop_at, o.stop_patience,
                                                    self.wall, self.log_every)

    def finish(self) -> list[Result]:
        prog, opts = self.prog, self.opts
        interrupted = bool(self.hard or (self.reason is not None and prog.step < self.steps
                                         and prog.active.any()))
        reason = "signal" if interrupted and self.reason is None else self.reason
        elapsed = self.wall()
        if self.pauses and self.pauses[0] == prog.step and not interrupted:
            _observe(opts.observers, prog.step, self.stepper)
        extras = [dict() for _ in self.configs]
        for ob in opts.observers:
            for i, e in enumerate(ob.extras()):
                extras[i].update(e)
        W1, W2 = self.stepper.params()
        results = [self.result(i, W1[i], W2[i], elapsed, extras[i], interrupted, reason)
                   for i in range(self.M)]
        signal = self.stop.signal if self.stop and reason == "signal" else None
        self.sink.finish(results, prog, elapsed, interrupted, reason, signal, opts.curves)
        return results

    def result(self, i: int, W1, W2, elapsed: float, extras: dict, interrupted: bool,
               reason) -> Result:
        c, prog = self.configs[i], self.prog
        final = {}
        if torch.isfinite(W1).all() and torch.isfinite(W2).all():
            with nvtx_range("evaluation"):
                final = evaluate(c, self.data, W1, W2)
            final["norm"] = param_norm(W1, W2, portable(c))
        if final and prog.diverged[i] is None and not np.isfinite(final["train_loss"]):
            self.report([final_divergence(c, i, prog, self.log_every)])  # θ finite, loss not
        why = prog.stop_reason[i] or (reason if interrupted and prog.active[i] else None)
        return Result(config=c, history=self.sink.history(i), params={"W1": W1, "W2": W2},
                      backend=self.stepper.backend, wall_time=elapsed,
                      steps_done=int(prog.steps_done[i]), diverged=prog.diverged[i],
                      interrupted=interrupted, final=final, extras=extras, stop_reason=why,
                      milestones={"memorization_step": prog.memorization_step[i],
                                  "grok_step": prog.grok_step[i]})

    def wall(self) -> float:
        return self.prog.wall + time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)  # with the bar, not among the results on stdout
        log.info(text)

    def profiler(self, open_: bool) -> None:
        self.profiling_open = open_
        called = profiler_start() if open_ else profiler_stop()
        api = "cudaProfilerStart" if open_ else "cudaProfilerStop"
        self.say(f"step {self.prog.step}: {api}" + ("" if called else " skipped (no CUDA: no-op)"))
        self.sink.event("profile_start" if open_ else "profile_stop", self.prog.step, self.wall(),
                        cuda=called)


def _observe(observers, step: int, stepper) -> None:
    W1, W2 = stepper.params()
    for ob in observers:
        ob.observe(step, W1, W2)
