"""Command line: `grokfast train`, `grokfast sweep`, `grokfast show`, `grokfast reproduce`
(also `python -m grokfast`).

Bad input prints one line `error: ...` (no traceback) and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import PRESETS, Config
from .errors import GrokfastError


def _config_from_args(args) -> Config:
    config = Config.preset(args.preset or "paper-real")
    for assignment in args.set or []:
        config = config.with_setting(assignment)
    return config


def cmd_train(args) -> int:
    """Train (or --resume) a run streamed into --out; exit 0, 1 if a model diverged, 130 if a
    signal stopped it (resumable), 2 on bad input."""
    from .engine import train

    seeds = _parse_seeds(args.seeds) if args.seeds else None
    resume = None
    if args.resume:
        config, seeds, resume = _resume_from_args(args, seeds)
        out = Path(args.resume)
        print(f"grokfast train: resuming {out} at step {resume['step']} of {_config_steps(config, resume)}"
              f", backend {resume['backend']}", flush=True)
    else:
        config = _config_from_args(args)
        preset = args.preset or "paper-real"
        out = Path(args.out) if args.out else Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"grokfast train: preset {preset}, p={config.p} {config.operation} "
              f"({config.n_train} train / {config.n_pairs - config.n_train} test pairs), width "
              f"{config.width}, {config.activation}, {config.loss} ({config.loss_reduction}), "
              f"{config.optimizer} lr={config.lr:g} weight_decay={config.weight_decay:g}, "
              f"{config.steps} steps, backend {args.backend}", flush=True)
    try:
        result = train(config, seeds=seeds, backend=args.backend, out=out, progress=not args.quiet,
                       handle_signals=True, resume=args.resume, checkpoint_every=args.checkpoint_every,
                       checkpoint_seconds=args.checkpoint_seconds, stop_at=args.stop_at,
                       stop_patience=args.stop_patience, max_steps=args.max_steps,
                       max_time=args.max_time, profile_steps=_parse_window(args.profile_steps))
    except KeyboardInterrupt:
        print(f"stopped at once (second interrupt): {out} keeps the history written so far and its "
              f"last complete checkpoint; `grokfast show {out}` reads it, `grokfast train --resume "
              f"{out}` continues it", file=sys.stderr)
        return 130
    results = result if isinstance(result, list) else [result]
    for r in results:
        if len(results) > 1:
            print(f"--- seed {r.config.seed}")
        print(r.summary())
    print(f"saved to {out}")
    if any(r.diverged for r in results):
        return 1
    return 130 if any(r.stop_reason == "signal" for r in results) else 0


def _config_steps(config, ckpt) -> int:
    return config.steps if config is not None else Config.from_dict(ckpt["configs"][0]).steps


def _resume_from_args(args, seeds):
    """(config or None for the saved one, seeds, checkpoint) for `grokfast train --resume DIR`."""
    from .checkpoint import load_checkpoint

    if args.preset:
        raise GrokfastError("--resume continues the saved config; drop --preset (only --set "
                            "steps=N may change, to extend the run)")
    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise GrokfastError(f"--resume {args.resume} writes into that directory; drop --out "
                            f"{args.out}")
    ckpt = load_checkpoint(Path(args.resume))
    if not args.set:
        return None, seeds, ckpt
    config = Config.from_dict(ckpt["configs"][0])
    for assignment in args.set:
        config = config.with_setting(assignment)
    return config, seeds, ckpt


def _parse_window(text):
    if text is None:
        return None
    try:
        a, b = text.split(":", 1)
        return int(a), int(b)
    except ValueError:
        raise GrokfastError(f"--profile-steps {text!r}: write A:B, the steps A … B−1 to capture "
                            f"(e.g. 1000:1200)") from None


def _parse_seeds(text: str) -> list[int]:
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return list(range(int(a), int(b)))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise GrokfastError(f"--seeds {text!r}: write a range A:B (B excluded) or a list 0,1,2") from None


def cmd_sweep(args) -> int:
    """Run (or --resume) a sweep into --out; exit 0, 1 if a launch failed with an error, 130 if
    a signal stopped it (resumable), 2 on bad input. Divergence is a result, not a failure."""
    from .sweep import RESUMABLE_STOPS, parse_grid_arg, plan, sweep

    options = dict(backend=args.backend, max_time=args.max_time,
                   checkpoint_every=args.checkpoint_every,
                   checkpoint_seconds=args.checkpoint_seconds)
    executor = "ray" if args.ray is not None else "local"
    ray = dict(executor=executor, ray_address=args.ray,
               cpus_per_launch=args.cpus_per_launch)
    if args.cpus_per_launch is not None and executor != "ray":
        raise GrokfastError("--cpus-per-launch applies to Ray launches: add --ray [ADDRESS]")
    rules = None
    if args.comprehension_ratio is not None:
        from .phases import PhaseRules
        rules = PhaseRules(comprehension_ratio=args.comprehension_ratio)
    launch_memory = None if args.launch_memory is None else args.launch_memory * 2 ** 30
    if args.resume:
        if args.preset or args.set or args.grid or args.seeds or args.out and \
                Path(args.out).resolve() != Path(args.resume).resolve():
            raise GrokfastError("--resume DIR continues the saved sweep: drop --preset, --set, "
                                "--grid, --seeds and --out")
        for name in ("stop_at", "stop_patience"):
            if getattr(args, name) is not None:
                raise GrokfastError(f"--resume keeps the sweep's --{name.replace('_', '-')}: "
                                    f"drop it")
        options = {k: v for k, v in options.items() if v is not None and
                   not (k == "backend" and v == "auto")}
        print(f"grokfast sweep: resuming {args.resume}", flush=True)
        try:
            result = sweep(None, out=args.resume, resume=True, progress=not args.quiet,
                           handle_signals=True, phase_rules=rules, **ray, **options)
        except KeyboardInterrupt:
            return _sweep_stopped(args.resume)
    else:
        config = _config_from_args(args)
        grid = dict(parse_grid_arg(g) for g in args.grid or [])
        if len(grid) != len(args.grid or []):
            raise GrokfastError("--grid names a field twice: give each field one --grid")
        seeds = _parse_seeds(args.seeds) if args.seeds else None
        preset = args.preset or "paper-real"
        out = Path(args.out) if args.out else Path("runs") / f"sweep-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        stop = dict(stop_at=args.stop_at, stop_patience=args.stop_patience)
        launches = plan(config, grid, seeds, max_models_per_launch=args.max_models_per_launch,
                        launch_memory=launch_memory)
        n = sum(l.n_models for l in launches)
        print(f"grokfast sweep: preset {preset}, "
              + (", ".join(f"{k} × {len(v)}" for k, v in grid.items()) or "no grid")
              + f", seeds × {len(seeds) if seeds else 1} = {n} models in {len(launches)} launch"
              + ("es" if len(launches) > 1 else "") + f" ({', '.join(str(l.n_models) for l in launches)}"
              f" models), {config.steps} steps, backend {args.backend} → {out}", flush=True)
        if args.dry_run:
            for l in launches:
                print(f"{l.name}: rows {l.rows[0]}–{l.rows[-1]}, {l.n_models} models")
            return 0
        try:
            result = sweep(config, grid=grid, seeds=seeds, out=out, progress=not args.quiet,
                           max_models_per_launch=args.max_models_per_launch,
                           launch_memory=launch_memory, handle_signals=True, phase_rules=rules,
                           **stop, **ray, **options)
        except KeyboardInterrupt:
            return _sweep_stopped(out)
    print(result.summary(rules))
    figures = sorted(p.name for p in result.dir.glob("*.png"))
    print(f"results: {result.dir / 'results.csv'}" + (f"; figures: {', '.join(figures)}"
                                                      if figures else ""))
    if any(r["error"] for r in result.table):
        return 1
    if any(r["stop_reason"] == "signal" for r in result.table):
        return 130
    if any(r["stop_reason"] in RESUMABLE_STOPS for r in result.table) or not result.complete:
        print(f"stopped early: `grokfast sweep --resume {result.dir}` finishes it")
    return 0


def _sweep_stopped(out) -> int:
    print(f"stopped at once (second interrupt): {out} keeps its finished launches and the last "
          f"complete checkpoint of the running one; `grokfast sweep --resume {out}` finishes it",
          file=sys.stderr)
    return 130


def cmd_show(args) -> int:
    from .history import RUN_FILE, read_events, read_run
    from .result import Result

    d = Path(args.dir)
    if (d / "plan.json").is_file():
        from .sweep import SweepResult
        print(SweepResult.load(d).summary())
        return 0
    dirs = sorted(p for p in d.glob("model_*") if p.is_dir()) if not (d / "config.json").exists() else [d]
    if not dirs:
        raise GrokfastError(f"{d} holds no saved run (no config.json): pass a directory written by "
                            f"`grokfast train --out DIR`")
    if (d / RUN_FILE).is_file():
        events = read_events(d)
        last = f"; last event: {events[-1]['event']} at step {events[-1]['step']}" if events else ""
        print(f"{d}: status {read_run(d).get('status', 'unknown')}{last}")
    for sub in dirs:
        r = Result.load(sub)
        c = r.config
        print(f"{sub}: p={c.p} {c.operation} {c.pairs} {c.encoding}, width {c.width} {c.activation}, "
              f"{c.loss} ({c.loss_reduction}), {c.optimizer} lr={c.lr:g} wd={c.weight_decay:g}, "
              f"seed {c.seed}")
        print(r.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grokfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a preset, optionally changed with --set key=value")
    t.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default paper-real)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a config field")
    t.add_argument("--seeds", help="run several seeds in one launch: A:B or 0,1,2")
    t.add_argument("--backend", default="auto", help="auto | triton | torch | reference")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIME)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint "
                   "(bitwise as if never stopped); --set steps=N extends it")
    t.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps")
    t.add_argument("--checkpoint-seconds", type=float, metavar="S",
                   help="checkpoint every S seconds (default 300 unless --checkpoint-every)")
    t.add_argument("--stop-at", choices=["grok", "none"], help="grok: stop each model once it "
                   "has grokked (see --stop-patience)")
    t.add_argument("--stop-patience", type=int, metavar="K", help="consecutive evaluations with "
                   "test accuracy ≥ grok_threshold that --stop-at grok waits for (default 3)")
    t.add_argument("--max-steps", type=int, metavar="N", help="stop at step N (resumable)")
    t.add_argument("--max-time", type=float, metavar="S", help="stop after S seconds (resumable)")
    t.add_argument("--profile-steps", metavar="A:B", help="cudaProfilerStart/Stop around steps "
                   "A … B−1, for nsys profile --capture-range=cudaProfilerApi")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    w = sub.add_parser("sweep", help="train every combination of --grid values × --seeds, "
                       "packed into launches; results.csv and figures")
    w.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default paper-real)")
    w.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a fixed field")
    w.add_argument("--grid", action="append", metavar="KEY=VALUES",
                   help="a swept field: KEY=v1,v2,…, KEY=logspace:A:B:N, KEY=linspace:A:B:N or "
                        "KEY=range:A:B (repeat for more axes; any field but seed)")
    w.add_argument("--seeds", help="seeds of every grid point: A:B or 0,1,2 (default: the "
                                   "config's seed)")
    w.add_argument("--backend", default="auto", help="auto | triton | torch | reference")
    w.add_argument("--out", help="sweep directory (default runs/sweep-PRESET-TIME)")
    w.add_argument("--resume", metavar="DIR", help="finish the sweep in DIR: finished launches "
                   "kept, the interrupted one resumed bitwise, the rest run")
    w.add_argument("--stop-at", choices=["grok", "none"], help="grok: stop each model once it "
                   "has grokked")
    w.add_argument("--stop-patience", type=int, metavar="K", help="evaluations ≥ grok_threshold "
                   "in a row that --stop-at grok waits for (default 3)")
    w.add_argument("--max-time", type=float, metavar="S", help="stop the sweep after S seconds "
                   "(resumable)")
    w.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint each launch "
                   "every N steps")
    w.add_argument("--checkpoint-seconds", type=float, metavar="S", help="checkpoint each launch "
                   "every S seconds (default 300)")
    w.add_argument("--max-models-per-launch", type=int, metavar="N", help="cap on the models of "
                   "one launch (besides the memory cap)")
    w.add_argument("--launch-memory", type=float, metavar="GIB", help="memory budget of one "
                   "launch in GiB (default 2): models per launch = budget / estimated bytes per model")
    w.add_argument("--comprehension-ratio", type=float, metavar="R", help="phase rule: grokked "
                   "within R × the memorization step is comprehension, later is grokking "
                   "(default 10)")
    w.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="run the launches "
                   "as Ray tasks: --ray alone or auto joins this machine's cluster, local starts one, "
                   "HOST:PORT another; needs pip install \"grokfast[ray]\"")
    w.add_argument("--cpus-per-launch", type=int, metavar="N", help="CPUs Ray reserves per launch")
    w.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=cmd_sweep)
    s = sub.add_parser("show", help="summarize a saved run or sweep directory")
    s.add_argument("dir")
    s.set_defaults(func=cmd_show)
    from .reproduce import configure_parser
    configure_parser(sub.add_parser("reproduce", help="reproduce the paper's figures and a report"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GrokfastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
