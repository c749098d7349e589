"""What the commands share: the run options declared once (train and sweep), the config from
--preset / --set, and the parsing of seeds and step windows."""
from __future__ import annotations

import argparse

from grokfast.config import PRESETS, Config
from grokfast.errors import GrokfastError


def add_run_options(p: argparse.ArgumentParser, what: str) -> None:
    """The options `grokfast train` and `grokfast sweep` share; `what` is "run" or "sweep" (its
    directory, defaults and the unit its checkpoints and time budget apply to)."""
    unit = "the run" if what == "run" else "each launch"
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default paper-real)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a config field" + ("" if what == "run" else " (fixed for every "
                                                  "grid point)"))
    p.add_argument("--seeds", help="several seeds in one launch: A:B or 0,1,2" if what == "run" else
                   "seeds of every grid point: A:B or 0,1,2 (default: the config's seed)")
    p.add_argument("--backend", default="auto", help="auto | triton | torch | reference")
    p.add_argument("--out", help=f"{what} directory (default runs/"
                   + ("PRESET-TIME)" if what == "run" else "sweep-PRESET-TIME)"))
    p.add_argument("--resume", metavar="DIR", help=(
        "continue the run in DIR from its checkpoint (bitwise as if never stopped); --set steps=N "
        "extends it" if what == "run" else "finish the sweep in DIR: finished launches kept, the "
        "interrupted one resumed bitwise, the rest run"))
    p.add_argument("--checkpoint-every", type=int, metavar="N", help=f"checkpoint {unit} every N "
                   f"steps")
    p.add_argument("--checkpoint-seconds", type=float, metavar="S", help=f"checkpoint {unit} every "
                   f"S seconds (default 300 unless --checkpoint-every)")
    p.add_argument("--stop-at", choices=["grok", "none"], help="grok: stop each model once it has "
                   "grokked (see --stop-patience)")
    p.add_argument("--stop-patience", type=int, metavar="K", help="consecutive evaluations with "
                   "test accuracy ≥ grok_threshold that --stop-at grok waits for (default 3)")
    p.add_argument("--max-time", type=float, metavar="S", help=f"stop {'the run' if what == 'run' else 'the sweep'} after S "
                   "seconds (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help=(
        "TensorBoard event files in OUT/tensorboard/, live" if what == "run" else "every plan row "
        "as a TensorBoard run in OUT/tensorboard/ with HParams, live") + " (pip install "
        "\"grokfast[tensorboard]\")")


def config_from_args(args) -> Config:
    return Config.preset(args.preset or "paper-real").with_settings(args.set or [])


def parse_window(text):
    if text is None:
        return None
    try:
        a, b = text.split(":", 1)
        return int(a), int(b)
    except ValueError:
        raise GrokfastError(f"--profile-steps {text!r}: write A:B, the steps A … B−1 to capture "
                            f"(e.g. 1000:1200)") from None


def parse_seeds(text: str) -> list[int]:
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return list(range(int(a), int(b)))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise GrokfastError(f"--seeds {text!r}: write a range A:B (B excluded) or a list 0,1,2") from None
