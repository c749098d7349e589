"""`grokfast show DIR`: summarize a run or sweep directory, also while it runs."""
from __future__ import annotations

from pathlib import Path

from grokfast.errors import GrokfastError
from grokfast.store.history import RUN_FILE, read_events, read_run
from grokfast.store.integrity import chunk_problems
from grokfast.store.ownership import live_status
from grokfast.store.result import Result
from grokfast.sweeps import SweepResult


def configure(p) -> None:
    p.add_argument("dir")
    p.set_defaults(func=cmd_show)


def cmd_show(args) -> int:
    d = Path(args.dir)
    if (d / "plan.json").is_file():
        print(SweepResult.load(d).summary())
        return 0
    dirs = sorted(p for p in d.glob("model_*") if p.is_dir()) if not (d / "config.json").exists() else [d]
    if not dirs:
        raise GrokfastError(f"{d} holds no saved run (no config.json): pass a directory written by "
                            f"`grokfast train --out DIR`")
    if (d / RUN_FILE).is_file():
        bad = chunk_problems(d, read_run(d).get("chunks") or {}, d / RUN_FILE)
        if bad:
            raise GrokfastError(f"{d}: history chunk {bad[0]} is damaged (checksum recorded in "
                                f"{RUN_FILE}); the rows before it are intact: restore it from a "
                                f"copy, or `grokfast train --resume {d}` continues from a "
                                f"checkpoint whose history is intact, if there is one")
        events = read_events(d)
        last = f"; last event: {events[-1]['event']} at step {events[-1]['step']}" if events else ""
        print(f"{d}: status {live_status(d, read_run(d).get('status', 'unknown'))}{last}")
    for sub in dirs:
        r = Result.load(sub)
        c = r.config
        print(f"{sub}: p={c.p} {c.operation} {c.pairs} {c.encoding}, width {c.width} {c.activation}, "
              f"{c.loss} ({c.loss_reduction}), {c.optimizer} lr={c.lr:g} wd={c.weight_decay:g}, "
              f"seed {c.seed}")
        print(r.summary())
    return 0
