"""A 4-launch CPU sweep through the local executor and through Ray (`--ray local`), and Ray's
start-up cost, measured side by side.

    python bench/bench_ray.py                    # the table for bench/RESULTS.md (markdown)
    python bench/bench_ray.py --repeats 5 --steps 20000
    pytest bench/bench_ray.py --benchmark-enable # one short run of both under pytest-benchmark

CI runs this file once as a smoke test (skipped without Ray: pip install "grokfast[ray]").

The sweep: paper-real (p = 11, width 128) with weight_decay × 4 and seeds 0–3, 4 models per launch,
so 4 launches of 4 models, backend torch, no figures. Providers, alternating within each repeat
so that a busy machine slows both alike:

* local: `grokfast.sweep(..., executor="local")`, one launch after another in this process (a
  paper-real launch steps on one thread: the torch backend's choice for small models);
* ray: `grokfast.sweep(..., executor="ray", ray_address="local")`, what `grokfast sweep --ray local`
  runs: a Ray instance started for the sweep with every core, one launch per core (one CPU
  declared each), stopped at the end. Its wall time includes that start and stop.

Ray's start-up, measured separately in the same run: `ray.init(address="local")`, the first round
trip of a task that imports grokfast and torch on a fresh worker (what the first launch pays), and
`ray.shutdown()`. The two tables must agree row for row but wall_time (checked every repeat).

The machine's parallel capacity, measured once in the same run, says what running launches at
once can win at all: one process per CPU training 4 paper-real models for 20 000 steps on one
thread (about a launch), all at once, against one such process alone. On a shared machine the
other users' load takes its share of it.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # this bench: loopback only

import grokfast  # noqa: E402
from grokfast import Config  # noqa: E402

PROVIDERS = ("local", "ray")
SEEDS = [0, 1, 2, 3]
GRID = {"weight_decay": [1e-4, 2e-4, 3e-4, 4e-4]}
MODELS_PER_LAUNCH = 4


def setup(provider: str, steps: int, out: Path):
    """A callable running the 4-launch sweep through `provider` into a fresh `out`, returning the
    SweepResult."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r}: one of {PROVIDERS}")
    base = Config.preset("paper-real").replace(steps=steps)
    ray = dict(executor="ray", ray_address="local") if provider == "ray" else {}

    def run():
        shutil.rmtree(out, ignore_errors=True)
        return grokfast.sweep(base, grid=GRID, seeds=SEEDS, out=out, backend="torch",
                              max_models_per_launch=MODELS_PER_LAUNCH, figures=False, **ray)
    return run


def _imports_grokfast():
    import torch  # noqa: F401

    import grokfast as g  # noqa: F401
    return os.getpid()


def startup_seconds() -> dict:
    """Seconds of ray.init(address="local"), the first task round trip, and ray.shutdown()."""
    import ray
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    t1 = time.perf_counter()
    ray.get(ray.remote(_imports_grokfast).remote())
    t2 = time.perf_counter()
    ray.shutdown()
    t3 = time.perf_counter()
    return dict(init=t1 - t0, first_task=t2 - t1, shutdown=t3 - t2)


_LAUNCH_ALONE = """
import time, torch, grokfast
torch.set_num_threads(1)
cfg = grokfast.Config.preset("paper-real").replace(steps=20000)
t = time.perf_counter(); grokfast.train(cfg, seeds=range(4), backend="torch")
print(time.perf_counter() - t)
"""


def parallel_capacity() -> dict:
    """Seconds of one launch-sized training alone, and of os.cpu_count() of them at once (the
    slowest), each in its own process; speedup = n × alone / together."""
    def start():
        return subprocess.Popen([sys.executable, "-c", _LAUNCH_ALONE], stdout=subprocess.PIPE,
                                text=True)

    def seconds(proc) -> float:
        out, _ = proc.communicate()
        assert proc.returncode == 0
        return float(out.strip().splitlines()[-1])

    n = os.cpu_count()
    alone = seconds(start())
    together = max(seconds(p) for p in [start() for _ in range(n)])
    return dict(n=n, alone=alone, together=together, speedup=n * alone / together)


def _table(result) -> list:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in result.table]


def measure(repeats: int, steps: int) -> dict:
    """provider → list of wall seconds, plus 'startup' → list of dicts."""
    times = {p: [] for p in PROVIDERS}
    startup = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            tables = {}
            for provider in (PROVIDERS if i % 2 == 0 else PROVIDERS[::-1]):
                run = setup(provider, steps, Path(tmp) / provider)
                t = time.perf_counter()
                res = run()
                times[provider].append(time.perf_counter() - t)
                assert res.complete and len(res.plan) == 4, res.status
                tables[provider] = _table(res)
            assert tables["local"] == tables["ray"], "the Ray sweep's table differs from local"
            startup.append(startup_seconds())
    return dict(times=times, startup=startup, capacity=parallel_capacity())


def _span(v) -> str:
    return f"{np.median(v):.2f} s ({min(v):.2f}–{max(v):.2f})"


def report(m: dict, steps: int, repeats: int) -> str:
    import ray
    import torch
    model_steps = len(SEEDS) * len(GRID["weight_decay"]) * steps
    loc, ray_t = m["times"]["local"], m["times"]["ray"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    load = os.getloadavg()[0]
    lines = [
        f"Sweep: paper-real, weight_decay × 4, seeds 0–3, {MODELS_PER_LAUNCH} models per launch "
        f"(4 launches), {steps} steps, backend torch; {repeats} repeats, median (min–max).",
        f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}; commit "
        f"{commit}; load average {load:.1f} at the end.",
        "",
        "| executor | wall time | model-steps/s | ratio to local |",
        "|---|---|---|---|",
        f"| local (one launch after another) | {_span(loc)} | "
        f"{model_steps / np.median(loc):,.0f} | 1.00× |",
        f"| Ray, `--ray local` ({os.cpu_count()} launches at once, start and stop included) | "
        f"{_span(ray_t)} | {model_steps / np.median(ray_t):,.0f} | "
        f"{np.median(loc) / np.median(ray_t):.2f}× |",
        "",
        "| Ray start-up | seconds |",
        "|---|---|",
    ]
    for k, what in (("init", "`ray.init(address=\"local\")`"),
                    ("first_task", "first task round trip (fresh worker imports grokfast, torch)"),
                    ("shutdown", "`ray.shutdown()`")):
        lines.append(f"| {what} | {_span([s[k] for s in m['startup']])} |")
    total = [sum(s.values()) for s in m["startup"]]
    lines.append(f"| total | {_span(total)} |")
    c = m["capacity"]
    lines += ["", f"Parallel capacity: a launch-sized training took {c['alone']:.2f} s alone and "
              f"{c['together']:.2f} s with {c['n']} at once (one per CPU): {c['speedup']:.2f}× "
              f"the work per second of one process."]
    return "\n".join(lines)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ray_sweep(benchmark, provider, tmp_path):
    pytest.importorskip("ray", reason='needs Ray: pip install "grokfast[ray]"')
    run = setup(provider, steps=200 if benchmark.disabled else 5000, out=tmp_path / provider)
    res = benchmark.pedantic(run, rounds=1, iterations=1)
    assert res.complete and len(res.plan) == 4 and len(res.table) == 16
    assert all(r["error"] is None for r in res.table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per provider")
    parser.add_argument("--steps", type=int, default=20_000, help="steps of every model")
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print('needs Ray: pip install "grokfast[ray]"', file=sys.stderr)
        return 2
    print(report(measure(args.repeats, args.steps), args.steps, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
