"""Command line: `grokfast train`, `grokfast sweep`, `grokfast show`, `grokfast export`,
`grokfast reproduce`, `grokfast fingerprint` (also `python -m grokfast`).

Bad input prints one line `error: ...` (no traceback) and exits with status 2; Ctrl-C or SIGTERM
that stops a command prints one line `stopped: ...` and exits with status 130. One module per
command (train, sweep, show, export, reproduce, fingerprint), the options train and sweep share declared once (common).
"""
from __future__ import annotations

import argparse
import sys

from grokfast.errors import GrokfastError, Interrupted
from grokfast.store.ownership import translate

from . import export, fingerprint, reproduce, show, sweep, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grokfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train.configure(sub.add_parser("train", help="train a preset, optionally changed with --set "
                                                 "key=value"))
    sweep.configure(sub.add_parser("sweep", help="train every combination of --grid values × "
                                                 "--seeds, packed into launches; results.csv and "
                                                 "figures"))
    show.configure(sub.add_parser("show", help="summarize a saved run or sweep directory"))
    export.configure(sub.add_parser("export", help="write a finished run's or sweep's files for "
                                                   "another viewer"))
    reproduce.configure(sub.add_parser("reproduce", help="reproduce the paper's figures and a "
                                                         "report"))
    fingerprint.configure(sub.add_parser("fingerprint", help="hash fixed short runs and compare "
                                         "them with the committed golden hashes"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own usage errors (it printed them): exit 2, as ours
        return e.code
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("stopped: interrupted before it finished; run the command again", file=sys.stderr)
        return 130
    except OSError as e:  # translated at the boundary: what happened and what to do
        print(f"error: {translate(e, getattr(args, 'out', None), 'use')}", file=sys.stderr)
        return 2
    except GrokfastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
