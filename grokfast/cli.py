"""Command line: `grokfast train`, `grokfast show` (also `python -m grokfast`).

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
    config = Config.preset(args.preset)
    for assignment in args.set or []:
        config = config.with_setting(assignment)
    return config


def cmd_train(args) -> int:
    from .engine import train

    config = _config_from_args(args)
    seeds = None
    if args.seeds:
        seeds = _parse_seeds(args.seeds)
    out = Path(args.out) if args.out else Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"grokfast train: preset {args.preset}, p={config.p} {config.operation} "
          f"({config.n_train} train / {config.n_pairs - config.n_train} test pairs), width "
          f"{config.width}, {config.activation}, {config.loss} ({config.loss_reduction}), "
          f"{config.optimizer} lr={config.lr:g} weight_decay={config.weight_decay:g}, "
          f"{config.steps} steps, backend {args.backend}", flush=True)
    result = train(config, seeds=seeds, backend=args.backend, progress=not args.quiet,
                   handle_signals=True)
    results = result if seeds is not None else [result]
    for r in results:
        if seeds is not None:
            print(f"--- seed {r.config.seed}")
        print(r.summary())
    result.save(out)
    print(f"saved to {out}")
    return 1 if any(r.diverged for r in results) else 0


def _parse_seeds(text: str) -> list[int]:
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return list(range(int(a), int(b)))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise GrokfastError(f"--seeds {text!r}: write a range A:B (B excluded) or a list 0,1,2") from None


def cmd_show(args) -> int:
    from .result import Result

    d = Path(args.dir)
    dirs = sorted(p for p in d.glob("model_*") if p.is_dir()) if not (d / "config.json").exists() else [d]
    if not dirs:
        raise GrokfastError(f"{d} holds no saved run (no config.json): pass a directory written by "
                            f"`grokfast train --out DIR`")
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
    t.add_argument("--preset", default="paper-real", help=f"one of: {', '.join(PRESETS)}")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a config field")
    t.add_argument("--seeds", help="run several seeds in one launch: A:B or 0,1,2")
    t.add_argument("--backend", default="auto", help="auto | triton | torch | reference")
    t.add_argument("--out", help="result directory (default runs/PRESET-TIME)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("show", help="summarize a saved run directory")
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
