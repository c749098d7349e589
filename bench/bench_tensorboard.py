"""The cost of `--tensorboard`: paper-real trained into a run directory with and without it, side by side.

    python bench/bench_tensorboard.py                  # the table for bench/RESULTS.md (markdown)
    python bench/bench_tensorboard.py --repeats 5
    pytest bench/bench_tensorboard.py --benchmark-enable

CI runs this file once as a smoke test (a few steps of each provider; skipped without
tensorboardX). Providers, alternating within each repeat so that a busy machine slows both alike:

* off: `grokfast.train(config, out=DIR)` — what `grokfast train --out DIR` does (history chunks,
  events, checkpoint, result and curves.png);
* tensorboard: the same with `tensorboard=True` (`--tensorboard`): every history row of every
  model also encoded into its event file each chunk, and curves.png embedded at the end.

Cases: paper-real (p = 11, width 128, 100 000 steps, statistics every 100 steps), one model; and
16 paper-real seeds in one launch for 20 000 steps. Measured: the whole call's wall time (steps/s
= steps / call), and the training part alone (Result.wall_time, the loop without saving); the
ratio is tensorboard ÷ off in steps/s, ≥ 0.95 the target. Also the seconds spent inside the
TensorBoard logger's calls during the tensorboard runs (the logger passed as
`tensorboard=Timed(TensorBoardLogger())`, the same object `tensorboard=True` makes), as a fraction
of the training time: the logging cost itself, which the other users' load disturbs far less than
a difference of two runs.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import grokfast
from grokfast import Config
from grokfast.tracking import Logger

PROVIDERS = ("off", "tensorboard")
CASES = {"paper-real, 1 model": (100_000, None), "paper-real, 16 seeds": (20_000, list(range(16)))}


class Timed(Logger):
    """A logger timing the calls of the logger it wraps."""

    def __init__(self, inner: Logger):
        self.inner, self.seconds = inner, 0.0

    def _call(self, name, *args):
        t = time.perf_counter()
        getattr(self.inner, name)(*args)
        self.seconds += time.perf_counter() - t

    def on_start(self, run):
        self._call("on_start", run)

    def on_event(self, record):
        self._call("on_event", record)

    def on_chunk(self, rows, n_valid):
        self._call("on_chunk", rows, n_valid)

    def on_finish(self, results, status):
        self._call("on_finish", results, status)


def setup(provider: str, steps: int, seeds, out: Path):
    """A callable training paper-real for `steps` (one model, or `seeds`) into a fresh `out` with
    `provider`'s logging, returning (call s, training s, s inside the TensorBoard logger)."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r}: one of {PROVIDERS}")
    config = Config.preset("paper-real").replace(steps=steps)

    def run():
        from grokfast.tracking.tensorboard import TensorBoardLogger
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        logger = Timed(TensorBoardLogger()) if provider == "tensorboard" else None
        r = grokfast.train(config, seeds=seeds, out=out, backend="torch",
                           tensorboard=logger or False)
        call = time.perf_counter() - t
        first = r if seeds is None else r[0]
        return call, first.wall_time, logger.seconds if logger else 0.0
    return run


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tensorboard_cost(benchmark, provider, tmp_path):
    pytest.importorskip("tensorboardX")
    steps = 200 if benchmark.disabled else CASES["paper-real, 1 model"][0]
    call, train, _ = benchmark.pedantic(setup(provider, steps, None, tmp_path / "run"), rounds=3,
                                     iterations=1)
    assert 0 < train <= call
    assert (tmp_path / "run" / "tensorboard").is_dir() == (provider == "tensorboard")


def measure(repeats: int) -> dict:
    """{(case, provider): [(call s, train s, logger s), …]}, providers alternating within each
    repeat."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (steps, seeds) in CASES.items():
            for _ in range(repeats):
                for provider in PROVIDERS:
                    run = setup(provider, steps, seeds, Path(tmp) / provider)
                    out.setdefault((case, provider), []).append(run())
    return out


def report(m: dict, repeats: int) -> str:
    lines = [f"`python bench/bench_tensorboard.py --repeats {repeats}`; load before: "
             f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}, "
             f"torch {__import__('torch').__version__}, tensorboardX "
             f"{__import__('tensorboardX').__version__}, {os.cpu_count()} CPUs", "",
             "| case | steps/s off (call) | steps/s tensorboard (call) | ratio call (range) "
             "| ratio training loop (range) | logger s ÷ training s (range) |",
             "|---|---|---|---|---|---|"]
    for case, (steps, seeds) in CASES.items():
        models = len(seeds) if seeds else 1
        off, tb = (np.array(m[case, p]) for p in PROVIDERS)
        rate = lambda a: models * steps / np.median(a[:, 0])  # noqa: E731
        ratios = [off[:, k] / tb[:, k] for k in (0, 1)]  # per repeat, side by side
        cells = [f"{np.median(r):.3f} ({r.min():.3f}–{r.max():.3f})" for r in ratios]
        unit = "model-steps/s" if models > 1 else "steps/s"
        share = tb[:, 2] / tb[:, 1]
        lines.append(f"| {case} | {rate(off):,.0f} {unit} | {rate(tb):,.0f} {unit} | "
                     f"{cells[0]} | {cells[1]} | {np.median(share):.4f} "
                     f"({share.min():.4f}–{share.max():.4f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    m = measure(args.repeats)
    print(report(m, args.repeats))
    print(f"load after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
