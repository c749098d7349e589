"""`grokfast train`: train a preset (or --resume a run) streamed into a run directory."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from grokfast.engine import train
from grokfast.errors import GrokfastError
from grokfast.store.ownership import owned
from grokfast.store.recovery import resume_point

from .common import add_run_options, config_from_args, parse_seeds, parse_window


def configure(p) -> None:
    add_run_options(p, "run")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop at step N (resumable)")
    p.add_argument("--profile-steps", metavar="A:B", help="cudaProfilerStart/Stop around steps "
                   "A … B−1, for nsys profile --capture-range=cudaProfilerApi")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """Train (or --resume) a run streamed into --out; exit 0, 1 if a model diverged, 130 if a
    signal stopped it (resumable), 2 on bad input."""
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if args.resume:
        out = Path(args.resume)
        with owned(out, create=False):  # held through train(), which takes it again
            config, resume = _resume_from_args(args)
            return _train(args, config, seeds, out, resume)
    else:
        config = config_from_args(args)
        preset = args.preset or "paper-real"
        out = Path(args.out) if args.out else Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"grokfast train: preset {preset}, p={config.p} {config.operation} "
              f"({config.n_train} train / {config.n_pairs - config.n_train} test pairs), width "
              f"{config.width}, {config.activation}, {config.loss} ({config.loss_reduction}), "
              f"{config.optimizer} lr={config.lr:g} weight_decay={config.weight_decay:g}, "
              f"{config.steps} steps, backend {args.backend}", flush=True)
    return _train(args, config, seeds, out, None)


def _train(args, config, seeds, out, resume) -> int:
    """train() as the command runs it; resume: the run directory, or its checkpoint already read."""
    try:
        result = train(config, seeds=seeds, backend=args.backend, out=out, progress=not args.quiet,
                       handle_signals=True, resume=resume, checkpoint_every=args.checkpoint_every,
                       checkpoint_seconds=args.checkpoint_seconds, stop_at=args.stop_at,
                       stop_patience=args.stop_patience, max_steps=args.max_steps,
                       max_time=args.max_time, profile_steps=parse_window(args.profile_steps),
                       tensorboard=args.tensorboard)
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


def _resume_from_args(args):
    """(config or None for the saved one, what train resumes from) for `grokfast train --resume
    DIR`: its verified checkpoint, read once with the directory held, or DIR itself when the run
    had no checkpoint (train then starts it over in place, saying so)."""
    if args.preset:
        raise GrokfastError("--resume continues the saved config; drop --preset (only --set "
                            "steps=N may change, to extend the run)")
    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise GrokfastError(f"--resume {args.resume} writes into that directory; drop --out "
                            f"{args.out}")
    ckpt, saved, _ = resume_point(Path(args.resume))
    config = saved[0].with_settings(args.set) if args.set else None
    if ckpt is None:
        return config, Path(args.resume)
    print(f"grokfast train: resuming {args.resume} at step {ckpt['step']} of "
          f"{(config or saved[0]).steps}, backend {ckpt['backend']}", flush=True)
    return config, ckpt
