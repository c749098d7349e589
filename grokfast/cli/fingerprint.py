"""`grokfast fingerprint`: hash fixed short runs and compare them with the committed golden hashes
(grokfast.reproduce.fingerprint)."""
from __future__ import annotations

import argparse

from grokfast.errors import GrokfastError
from grokfast.reproduce.fingerprint import GOLDEN_RUNS, numerics_fingerprint, write_golden


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", help="comma-separated golden runs (default all): "
                   + ", ".join(GOLDEN_RUNS))
    p.add_argument("--backend", default="torch", help="torch (default) | triton | reference")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--write", action="store_true", help="regenerate golden_hashes.json from this "
                   "machine (only for a deliberate change of numerics)")
    p.set_defaults(func=cmd_fingerprint)


def cmd_fingerprint(args) -> int:
    """Exit 0 when every golden run matches (or has no golden value on this backend), else 1."""
    if args.write:
        write_golden()
        return 0
    names = args.runs.split(",") if args.runs else None
    for name in names or []:
        if name not in GOLDEN_RUNS:
            raise GrokfastError(f"unknown golden run {name!r}: choose from "
                                f"{', '.join(GOLDEN_RUNS)}")
    res = numerics_fingerprint(names, args.backend, args.device)
    bad = [n for n, r in res.items() if r["golden"] is not None and not r["match"]]
    return 1 if bad else 0
