"""What `reproduce paper|scaling|prediction` share: their output directory held under the one rule
of every command's output (grokfast.store.output.command_output), and resumable stages.

    with reproducing(out, "reproduce paper", args, log) as o:
        sim = stage(o, "simulation", run=..., save=..., load=..., log=log)

A stage that finished in an earlier run of the same command (same arguments, recorded in
output.json) is loaded, not run again; a stage that did not finish starts over in a fresh
directory; a sweep stage resumes from its checkpoints. Ctrl-C or SIGTERM stops at once (a sweep
after its current chunk) and raises Interrupted: the CLI prints one line and exits 130, and the
same command run again continues.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from grokfast.errors import GrokfastError, Interrupted
from grokfast.store.output import Output, command_output
from grokfast.sweeps.result import SweepResult


@contextlib.contextmanager
def _term_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt as Ctrl-C does (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupted(o: Output, where: str) -> Interrupted:
    kept = ", ".join(o.stages()) or "none yet"
    return Interrupted(f"`grokfast {o.command}` interrupted during {where}; {o.dir} keeps its "
                       f"finished stages ({kept}): run the same command with the same --out "
                       f"again to continue")


@contextlib.contextmanager
def reproducing(out, command: str, args: dict, report_file: Optional[str] = None
                ) -> Iterator[Output]:
    """`out` held for `command` (command_output), its arguments recorded (a rerun with other ones
    is refused), Ctrl-C / SIGTERM turned into Interrupted. report_file: the file that marks an
    output of this command from before output.json (it is continued as it is)."""
    with command_output(out, command, marker=report_file) as o, _term_interrupts():
        o.check_args(args)
        try:
            yield o
        except KeyboardInterrupt:
            raise interrupted(o, "a stage") from None


def stage(o: Output, name: str, run: Callable, save: Callable = None, load: Callable = None,
          log=print, tag: str = "reproduce"):
    """The result of stage `name`: load() when an earlier run finished it, else run(), save(it)
    and the stage recorded with its seconds."""
    if o.stage_done(name):
        log(f"[{tag}] {name}: kept from the earlier run ({o.stages()[name]:.1f} s)")
        return load() if load is not None else None
    log(f"[{tag}] {name} …")
    t0 = time.perf_counter()
    try:
        res = run()
        if save is not None:
            save(res)
    except KeyboardInterrupt:
        raise interrupted(o, name) from None
    seconds = time.perf_counter() - t0
    o.finish_stage(name, seconds)
    log(f"[{tag}] {name}: {seconds:.1f} s")
    return res


def sweep_stage(o: Output, name: str, run_sweep: Callable, log=print, tag: str = "reproduce"):
    """A sweep into o.dir/name: resumed from its checkpoints when an earlier run started it;
    run_sweep(out, resume) → SweepResult. Interrupted when a signal stopped it."""
    def run():
        swept = run_sweep(o.path(name), (o.dir / name / "plan.json").is_file())
        if any(r.get("stop_reason") == "signal" for r in swept.table) or not swept.complete:
            raise interrupted(o, f"the sweep in {o.dir / name}")
        return swept

    return stage(o, name, run, load=lambda: SweepResult.load(o.dir / name), log=log, tag=tag)


def finished_sweep(path) -> SweepResult:
    """The sweep a report is made from: finished and with a row for every model of its plan, else
    one GrokfastError naming the file to restore (or the command that finishes it)."""
    path = Path(path)
    if not (path / "plan.json").is_file():
        raise GrokfastError(f"{path / 'plan.json'} is missing: the command that wrote "
                            f"{path.parent} did not start its sweep there; run it again to "
                            f"continue, or pass the --out of a finished one")
    swept = SweepResult.load(path)
    if not swept.complete:
        raise GrokfastError(f"{path} is not finished: run the same command again to continue it "
                            f"(or `grokfast sweep --resume {path}`)")
    if len(swept.table) != swept.n_models:
        raise GrokfastError(f"{path / 'results.csv'} holds {len(swept.table)} of the "
                            f"{swept.n_models} rows of a finished sweep (deleted or cut): restore "
                            f"it from a copy")
    return swept


def check_stages(out: Path, names, command: str) -> None:
    """--report-only: every file of `names` is in out, else one error naming the first missing."""
    for n in names:
        if not (Path(out) / n).exists():
            raise GrokfastError(f"{Path(out) / n} is missing: the `grokfast {command}` in {out} "
                                f"did not finish; run the same command again to continue it")
