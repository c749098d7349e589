"""`grokfast export tensorboard DIR`: a finished run's or sweep's TensorBoard files, after the fact
(the same bytes as --tensorboard writes live)."""
from __future__ import annotations

from pathlib import Path

from grokfast.sweeps.export import export_tensorboard


def configure(p) -> None:
    p.add_argument("format", choices=["tensorboard"], help="tensorboard: DIR/tensorboard/, the "
                   "same files as --tensorboard writes live")
    p.add_argument("dir")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    runs = export_tensorboard(args.dir)
    print(f"wrote {len(runs)} TensorBoard run{'s' if len(runs) != 1 else ''} under "
          f"{Path(args.dir) / 'tensorboard'}: tensorboard --logdir {args.dir}")
    return 0
