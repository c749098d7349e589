"""`grokfast sweep`: every combination of --grid values × --seeds, packed into launches."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from grokfast.errors import GrokfastError
from grokfast.sweeps import RESUMABLE_STOPS, parse_grid_arg, plan, sweep
from grokfast.sweeps.phases import PhaseRules

from .common import add_run_options, config_from_args, parse_seeds


def configure(p) -> None:
    add_run_options(p, "sweep")
    p.add_argument("--grid", action="append", metavar="KEY=VALUES",
                   help="a swept field: KEY=v1,v2,…, KEY=logspace:A:B:N, KEY=linspace:A:B:N or "
                        "KEY=range:A:B (repeat for more axes; any field but seed)")
    p.add_argument("--max-models-per-launch", type=int, metavar="N", help="cap on the models of "
                   "one launch (besides the memory cap)")
    p.add_argument("--launch-memory", type=float, metavar="GIB", help="memory budget of one "
                   "launch in GiB (default 2): models per launch = budget / estimated bytes per model")
    p.add_argument("--comprehension-ratio", type=float, metavar="R", help="phase rule: grokked "
                   "within R × the memorization step is comprehension, later is grokking "
                   "(default 10)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="run the launches "
                   "as Ray tasks: --ray alone or auto joins this machine's cluster, local starts one, "
                   "HOST:PORT another; needs pip install \"grokfast[ray]\"")
    p.add_argument("--cpus-per-launch", type=int, metavar="N", help="CPUs Ray reserves per launch")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    """Run (or --resume) a sweep into --out; exit 0, 1 if a launch failed with an error, 130 if
    a signal stopped it (resumable), 2 on bad input. Divergence is a result, not a failure."""
    options = dict(backend=args.backend, max_time=args.max_time,
                   checkpoint_every=args.checkpoint_every,
                   checkpoint_seconds=args.checkpoint_seconds)
    if args.tensorboard:
        options["tensorboard"] = True
    executor = "ray" if args.ray is not None else "local"
    ray = dict(executor=executor, ray_address=args.ray,
               cpus_per_launch=args.cpus_per_launch)
    if args.cpus_per_launch is not None and executor != "ray":
        raise GrokfastError("--cpus-per-launch applies to Ray launches: add --ray [ADDRESS]")
    rules = None
    if args.comprehension_ratio is not None:
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
        config = config_from_args(args)
        grid = dict(parse_grid_arg(g) for g in args.grid or [])
        if len(grid) != len(args.grid or []):
            raise GrokfastError("--grid names a field twice: give each field one --grid")
        seeds = parse_seeds(args.seeds) if args.seeds else None
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
