"""Where the step of a lone large model goes: the phases of split.CoreSplit and the serial rest.

    python bench/bench_split.py                      # gromov and power, one model each
    python bench/bench_split.py --cases gromov --steps 100

One model of each preset with numerics "portable" on torch's threads, as make_stepper builds it
(a TorchStepper whose kernels run split over the threads: split.CoreSplit). After warm-up, `steps`
steps are timed with every CoreSplit.run (a phase: each thread runs its ranges, the caller's
thread included, and all are waited for) and the serial parts around them instrumented. Reported
per step: for each kind of phase (named by the calls of its first part) the wall time, the
thread CPU time of the caller's part and of the slowest other part (their difference is the
imbalance; wall minus the slower is the hand-off); for the serial parts (the caller's thread
alone: the loss gradient where no phase takes it, the optimizer, the statistics of logged steps
around their own phases) the wall time; and the whole step's wall and process CPU time. On a
busy machine wall times stretch with the load; the thread CPU times hold.
"""
from __future__ import annotations

import argparse
import collections
import os
import threading
import time

import numpy as np
import torch

from grokfast import Config, make_dataset
from grokfast.backends.torch import make_stepper
from grokfast.backends.torch import split as split_mod
from grokfast.backends.torch import stepper as stepper_mod


class Recorder:
    """Wall and thread CPU time of the instrumented parts of one stepper's steps."""

    def __init__(self):
        self.wall = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)
        self.cpu = collections.defaultdict(float)        # (phase number, thread) → CPU s
        self.kinds: dict = {}                            # phase number → kind
        self.phase = 0
        self.main = threading.get_ident()

    def timed(self, name: str, fn):
        def run(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.wall[name] += time.perf_counter() - t0
                self.calls[name] += 1
        return run

    def instrument(self, st):
        """Time st's phases and serial parts; returns the function that undoes it."""
        core, calls, run = st.core, split_mod._calls, st.core.run
        stats = {name: getattr(stepper_mod, name) for name in ("stats_before", "stats_after")}

        def phase(parts):
            self.phase += 1
            self.kinds[self.phase] = "phase: " + " + ".join(
                getattr(fn, "__name__", "?") for fn, _ in parts[0])
            self.timed(self.kinds[self.phase], run)(parts)

        def part(calls_):
            c0 = time.thread_time()
            calls(calls_)
            self.cpu[(self.phase, threading.get_ident())] += time.thread_time() - c0
        core.run, split_mod._calls = phase, part
        st.loss_grad = self.timed("serial: loss gradient (all rows)", st.loss_grad)
        st.opt.step = self.timed("serial: optimizer", st.opt.step)
        for name, fn in stats.items():
            setattr(stepper_mod, name, self.timed(f"statistics: {name} (its phases included)",
                                                  fn))

        def undo():
            split_mod._calls = calls
            for name, fn in stats.items():
                setattr(stepper_mod, name, fn)
        return undo

    def table(self, steps: int) -> list:
        per = collections.defaultdict(lambda: [0.0, 0.0])          # kind → caller, slowest other
        for number, kind in self.kinds.items():
            cpu = {th: v for (n, th), v in self.cpu.items() if n == number}
            per[kind][0] += cpu.get(self.main, 0.0)
            per[kind][1] += max([v for th, v in cpu.items() if th != self.main] or [0.0])
        rows = []
        for name in sorted(self.wall, key=lambda n: -self.wall[n]):
            cpu = " | ".join(f"{1e3 * v / steps:.2f}" for v in per[name]) if name in per else \
                "– | –"                                           # the caller's thread alone
            rows.append(f"| {name} | {self.calls[name] / steps:.2f} | "
                        f"{1e3 * self.wall[name] / steps:.2f} | {cpu} |")
        return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="gromov,power")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 4 log intervals)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.2f}")
    for case in args.cases.split(","):
        c = Config.preset(case)
        steps = args.steps or 4 * c.log_every
        st = make_stepper([c], make_dataset(c), torch.device("cpu"))
        if getattr(st, "core", None) is None:
            print(f"{case}: not split over threads here ({torch.get_num_threads()} threads)")
            continue
        active = np.ones(1, bool)
        st.advance(0, c.log_every, active)                          # compile, warm up
        rec = Recorder()
        undo = rec.instrument(st)
        try:
            w0, c0 = time.perf_counter(), time.process_time()
            st.advance(c.log_every, steps, active)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        finally:
            undo()
        print(f"\n{case}: {steps} steps, {1e3 * wall / steps:.2f} ms wall and "
              f"{1e3 * cpu / steps:.2f} ms process CPU per step, load {os.getloadavg()[0]:.2f}")
        print("| part | calls per step | wall ms/step | caller's CPU ms/step | slowest other "
              "thread's CPU ms/step |")
        print("|---|---|---|---|---|")
        print("\n".join(rec.table(steps)))

if __name__ == "__main__":
    main()
