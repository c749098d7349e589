"""`grokfast fingerprint`: hash fixed short runs and compare them with the committed golden hashes
(grokfast.reproduce.fingerprint)."""
from __future__ import annotations

import argparse

import torch

from grokfast.errors import GrokfastError, check_choice
from grokfast.reproduce.fingerprint import GOLDEN_RUNS, numerics_fingerprint, write_golden


BACKENDS = ("torch", "triton", "reference")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", help="comma-separated golden runs (default all): "
                   + ", ".join(GOLDEN_RUNS))
    p.add_argument("--backend", default="torch", help=" | ".join(BACKENDS) + " (default torch)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--write", metavar="FILE", help="regenerate the golden hashes from this "
                   "machine into FILE, named in full (grokfast/reproduce/golden_hashes.json in a "
                   "checkout: only for a deliberate change of numerics); every run, torch, CPU")
    p.set_defaults(func=cmd_fingerprint)


def cmd_fingerprint(args) -> int:
    """Exit 0 when every golden run matches (or has no golden value on this backend), else 1.
    Every option is checked before anything runs or is written."""
    names = args.runs.split(",") if args.runs else None
    for name in names or []:
        if name not in GOLDEN_RUNS:
            raise GrokfastError(f"--runs: unknown golden run {name!r}; choose from "
                                f"{', '.join(GOLDEN_RUNS)}")
    check_choice("--backend", args.backend, BACKENDS)
    check_choice("--device", args.device, ("cpu", "cuda"))
    if args.write is not None:
        if names or args.backend != "torch" or args.device != "cpu":
            raise GrokfastError("--write regenerates every golden run on the torch backend on "
                                "the CPU: leave out --runs, --backend and --device")
        write_golden(args.write)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise GrokfastError("--device cuda: no CUDA GPU is visible here; run on a GPU machine, "
                            "or leave --device out (cpu)")
    res = numerics_fingerprint(names, args.backend, args.device)
    bad = [n for n, r in res.items() if r["golden"] is not None and not r["match"]]
    return 1 if bad else 0
