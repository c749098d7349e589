"""`grokfast reproduce paper`, `scaling`, `prediction` and `hierarchy`: real subcommands, each with its own
options (grokfast.reproduce.paper, grokfast.reproduce.scaling)."""
from __future__ import annotations

import time
from pathlib import Path

from grokfast.errors import GrokfastError
from grokfast.reproduce.hierarchy import reproduce_hierarchy
from grokfast.reproduce.hierarchy_report import write_analysis as hierarchy_analysis
from grokfast.reproduce.paper import reproduce_paper
from grokfast.reproduce.prediction import reproduce_prediction
from grokfast.reproduce.prediction import write_analysis as prediction_analysis
from grokfast.reproduce.scaling import reproduce_scaling, write_analysis


def configure(p) -> None:
    sub = p.add_subparsers(dest="what", required=True, metavar="{paper,scaling,prediction,hierarchy}")
    paper = sub.add_parser("paper", help="Fig. 5, Fig. 6 and more, with a report")
    paper.add_argument("--quick", action="store_true", help="2 seeds, 3000 Euler steps, 50k GD "
                       "steps: about 1.5 minutes on 2 CPU cores (full mode: 5 seeds, 5000 / 100k "
                       "steps, about 5 minutes)")
    _common(paper, "paper")
    paper.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N−1 (both experiments)")
    paper.add_argument("--sim-steps", type=int, metavar="N", help="Euler steps of paper-sim")
    paper.add_argument("--real-steps", type=int, metavar="N", help="GD steps of paper-real")
    paper.add_argument("--probe-every", type=int, metavar="N", help="probe every N GD steps")
    paper.set_defaults(func=cmd_paper)
    scaling = sub.add_parser("scaling", help="grok step against λη, the time scale of Eq. 20")
    scaling.add_argument("--quick", action="store_true", help="λη over 4× with 16k steps")
    _common(scaling, "scaling")
    _study(scaling)
    scaling.set_defaults(func=cmd_scaling)
    prediction = sub.add_parser("prediction", help="Eq. 20's grok step model by model against "
                                "trained paper-real models")
    prediction.add_argument("--quick", action="store_true", help="16 models, a few minutes")
    _common(prediction, "prediction")
    _study(prediction)
    prediction.set_defaults(func=cmd_prediction)
    hierarchy = sub.add_parser("hierarchy", help="where Eq. 20's factor comes from: grok times on "
                               "a ladder from trained GD to the exact manifold flow to Eq. 20")
    hierarchy.add_argument("--quick", action="store_true", help="2 models, one (weight decay, lr) "
                           "cell, every rung")
    _common(hierarchy, "hierarchy")
    _study(hierarchy)
    hierarchy.set_defaults(func=cmd_hierarchy)


def _common(p, what: str) -> None:
    p.add_argument("--out", help=f"output directory (default runs/reproduce-{what}-TIME)")
    p.add_argument("--backend", default="auto", help="training backend: auto | triton | torch | "
                                                     "reference")


def _study(p) -> None:
    """The options of the studies over paper-real's weight decay × lr × seeds (scaling, prediction)."""
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N−1 per (weight decay, lr)")
    p.add_argument("--steps", type=int, metavar="N", help="GD steps at most per model")
    p.add_argument("--weight-decays", metavar="A,B,…", help="the weight decays swept")
    p.add_argument("--lrs", metavar="A,B,…", help="the learning rates swept")
    p.add_argument("--report-only", action="store_true", help="redo the summary, figures and report "
                   "of the finished run in --out (no training)")


def _finished(args) -> Path:
    """The finished run --report-only redoes the analysis of (--out is required)."""
    if not args.out:
        raise GrokfastError("--report-only rewrites the report of a finished run: pass --out DIR")
    return Path(args.out)


def _out(args) -> Path:
    return Path(args.out) if args.out else \
        Path("runs") / f"reproduce-{args.what}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_paper(args) -> int:
    reproduce_paper(_out(args), quick=args.quick, seeds=args.seeds, sim_steps=args.sim_steps,
                    real_steps=args.real_steps, probe_every=args.probe_every, backend=args.backend)
    return 0


def parse_floats(text, name):
    """--NAME A,B,… as floats (None when not given)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise GrokfastError(f"--{name} {text!r}: give numbers separated by commas") from None


def cmd_scaling(args) -> int:
    out = _out(args)
    if args.report_only:
        s = write_analysis(_finished(args))
        print(f"[scaling] exponent {s['fit']['slope']:.3f}; wrote {out / 'report.md'}")
        return 0
    reproduce_scaling(out, quick=args.quick, seeds=args.seeds, steps=args.steps,
                      weight_decays=parse_floats(args.weight_decays, "weight-decays"),
                      lrs=parse_floats(args.lrs, "lrs"), backend=args.backend)
    return 0


def _run_study(args, analysis, reproduce) -> int:
    """--report-only: analysis(out) of the finished run; else reproduce(out, the study's options)."""
    out = _out(args)
    if args.report_only:
        analysis(_finished(args))
        print(f"[{args.what}] wrote {out / 'report.md'}")
        return 0
    reproduce(out, quick=args.quick, seeds=args.seeds, steps=args.steps,
              weight_decays=parse_floats(args.weight_decays, "weight-decays"),
              lrs=parse_floats(args.lrs, "lrs"), backend=args.backend)
    return 0


def cmd_prediction(args) -> int:
    return _run_study(args, prediction_analysis, reproduce_prediction)


def cmd_hierarchy(args) -> int:
    return _run_study(args, hierarchy_analysis, reproduce_hierarchy)
