"""The one rule for every directory a command other than `train` / `sweep` writes: `command_output`.

`reproduce paper|scaling|prediction`, `export tensorboard`, `fingerprint --write` — and any command
added later — enter ``with command_output(out, command) as o:`` before their first write and write
only through the `Output` it yields. It keeps the promises `train` and `sweep` keep
(grokfast.store.ownership):

* **Ownership.** `out` must be missing or empty — it is then claimed: ``output.json`` records the
  command — or hold the ``output.json`` of the same command (a rerun continues it: its finished
  stages are kept, see `Output.stage_done`). A run, a sweep, the output of another command or
  files grokfast did not write are refused, saying what to do. ``claim=False``: `out` belongs to a
  run or sweep the caller checked (export writes its ``tensorboard/`` there under that writer's
  lock); ``marker``: a file (not a link) that identifies an output of this command written
  before ``output.json`` existed, in a directory holding no run or sweep (it is continued).
* **One writer.** An OS lock (``output.lock``; ``lock=`` a run's or sweep's own lock) is held
  from before the first write to the end; a second writer is refused with the holder's pid.
* **Writes by rename, never through a symlink.** `Output.write_bytes` / `write_text` /
  `write_json` replace a file by rename (a link there is replaced, not followed); `Output.path`
  (for writers that also replace by rename: figures, reports) refuses a link on the way down;
  `Output.fresh_dir` gives a writer of plain files (``SimResult.save``) an empty directory it
  made. Every name passes `check_name`.
* **OS errors** become one GrokfastError saying what to do (`os_errors`).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator, Optional

from grokfast.errors import GrokfastError

from .history import atomic_write
from .ownership import (
    OUTPUT_LOCK,
    DirLock,
    check_name,
    claim_new,
    holds,
    listing,
    os_errors,
    read_json,
    real_dir,
)

OUTPUT_FILE = "output.json"
OUTPUT_FORMAT = "grokfast-output/1"


class Output:
    """A command's output directory, held (see the module docstring): `dir`, and its writers."""

    def __init__(self, directory: Path, command: str, meta: Optional[dict]):
        self.dir, self.command, self.meta = Path(directory), command, meta

    def path(self, name: str) -> Path:
        """DIR/name ("a/b" allowed), its parent directories made, for a writer that replaces the
        file by rename (a link at the name is then replaced, never followed): refused when a
        link stands on the way down."""
        check_name(name, "path", f"the output of `grokfast {self.command}`")
        p = self.dir / name
        for parent in reversed(p.relative_to(self.dir).parents[:-1]):
            real_dir(self.dir / parent, create=True)
        return p

    def write_bytes(self, name: str, data: bytes) -> Path:
        p = self.path(name)
        atomic_write(p, lambda f: f.write(data))
        return p

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj, default=None) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, default=default) + "\n")

    def fresh_dir(self, name: str) -> Path:
        """DIR/name as a new empty directory, for a writer of another layer that writes plain
        files (what a stage left there unfinished is removed; a link is removed, never
        followed)."""
        p = self.path(name)
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
        p.mkdir()
        return p

    # ---- stages: a rerun of the same command keeps the finished ones
    def check_args(self, args: dict) -> None:
        """Record the command's arguments; a rerun with other ones is refused (it would not
        continue the same work)."""
        saved = (self.meta or {}).get("args")
        args = json.loads(json.dumps(args))
        if saved is not None and saved != args:
            diff = ", ".join(f"{k}={saved.get(k)!r}" for k in sorted(set(saved) | set(args))
                             if saved.get(k) != args.get(k))
            raise GrokfastError(f"{self.dir} holds `grokfast {self.command}` started with {diff}: "
                                f"run it again with the same options to continue it, or choose "
                                f"a new --out")
        self._save(args=args)

    def stage_done(self, stage: str) -> bool:
        return stage in self.stages()

    def stages(self) -> dict:
        """The finished stages: name → seconds it took."""
        return dict((self.meta or {}).get("stages") or {})

    def finish_stage(self, stage: str, seconds: float) -> None:
        self._save(stages=self.stages() | {stage: seconds})

    def _save(self, **fields) -> None:
        self.meta = dict(self.meta or {}, format=OUTPUT_FORMAT, command=self.command, **fields)
        self.write_json(OUTPUT_FILE, self.meta)


def _claimed(out: Path, command: str, marker: Optional[str], create: bool) -> Optional[dict]:
    """output.json of `out` when it holds this command's output ({} for one from before
    output.json: `marker`); None when it is missing or empty and create; else GrokfastError
    saying what is there and what to do."""
    names = listing(out)
    if OUTPUT_FILE in names:
        meta = read_json(out / OUTPUT_FILE)
        if meta.get("format") != OUTPUT_FORMAT or not isinstance(meta.get("command"), str) \
                or not isinstance(meta.get("stages", {}), dict) \
                or not isinstance(meta.get("args", {}), dict):
            raise GrokfastError(f"{out / OUTPUT_FILE} is damaged (not the record of a grokfast "
                                f"command's output): restore it, or choose a new --out")
        if meta["command"] == command:
            return meta
        raise GrokfastError(f"{out} holds the output of `grokfast {meta.get('command')}`, not of "
                            f"`grokfast {command}`: choose a new or empty --out")
    mark = None if marker is None else out / marker
    if mark is not None and mark.is_file() and not mark.is_symlink() and holds(names) is None:
        return {}
    if not create:
        what = f"a {holds(names)}" if holds(names) else "files" if names else "nothing"
        raise GrokfastError(f"{out} holds {what}, no output of `grokfast {command}`: pass the "
                            f"--out directory of a finished `grokfast {command}`")
    if names:
        claim_new(out, kind=f"`grokfast {command}` output")
    return None


@contextlib.contextmanager
def command_output(out, command: str, *, claim: bool = True, create: bool = True,
                   lock: Optional[str] = OUTPUT_LOCK, marker: Optional[str] = None
                   ) -> Iterator[Output]:
    """`out` held for `command` (e.g. "reproduce scaling"): owned, locked, written by rename only
    (see the module docstring). create=False: `out` must exist and hold this command's output
    (--report-only). claim=False: `out` is a run or sweep the caller checked; only the lock.
    lock=None: no lock file (`fingerprint --write` replaces one file in a source directory by
    rename: two writers each leave a complete file)."""
    out = Path(out)
    with os_errors(out):
        if not create and not out.is_dir():
            whose = f"a finished `grokfast {command}`" if claim else "a run or sweep"
            raise GrokfastError(f"{out} is not a directory: pass the --out directory of {whose}")
        meta = _claimed(out, command, marker, create) if claim else None
        real_dir(out, create=True)
        with DirLock(out, lock, what=command) if lock else contextlib.nullcontext():
            if claim:
                meta = _claimed(out, command, marker, create)  # again, now that it is ours
            o = Output(out, command, meta)
            if claim and meta is None:
                o._save()
            yield o
