"""A run or sweep owns its directory: one writer at a time, only names it made, never a symlink.

* **One writer**: `DirLock` holds an exclusive OS lock (``fcntl.flock``) on ``DIR/run.lock``
  (a run or a sweep's launch) or ``DIR/sweep.lock`` (a sweep) for the life of the writer, taken
  before anything else is written. The kernel releases it when the process ends, SIGKILL
  included, so a crash never needs a manual unlock; a second writer is refused at once with the
  holder's pid. Readers take no lock; `lock_held` tells them whether a "running" status is live.
* **One ownership rule** (`claim_new`): a new run or sweep needs a missing or empty directory
  (a lock file alone counts as empty); a directory holding a run or sweep needs ``--resume``;
  anything else is refused, saying what to do.
* **Only its own names**: every name read back from a file (model and launch names of
  ``run.json`` / ``plan.json``, the config fields keying plan rows, checksum names, TensorBoard run
  paths) passes the one validator `check_name` (`check_names` for a list): a plain name of the
  form the writer makes, never a path outside the directory. `clear_run` removes only those
  names (a run killed before its first checkpoint starts over in place).
* **No symlinks**: files are replaced by rename (which replaces a link, never follows it),
  appended or locked only through ``O_NOFOLLOW``, and directories inside a run are refused when
  they are links (`real_dir`).
* **OS errors at the boundary**: `os_errors` turns an OSError (read-only, not a directory, no
  space, …) into one GrokfastError saying what to do.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from grokfast.errors import GrokfastError

RUN_LOCK = "run.lock"
SWEEP_LOCK = "sweep.lock"
OUTPUT_LOCK = "output.lock"  # a command's output directory (grokfast.store.output)
LOCK_NAMES = (RUN_LOCK, SWEEP_LOCK, OUTPUT_LOCK)
MODEL_NAME = re.compile(r"^(\.|model_[0-9]{3,9})$")
LAUNCH_NAME = re.compile(r"^launch_[0-9]{3,9}$")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
FILE_NAME = re.compile(r"^\w[\w.,=+-]{0,254}$")
# what check_name accepts for each kind of name ("path": FILE_NAME parts joined by "/")
NAME_RULES = {"model": MODEL_NAME, "launch": LAUNCH_NAME, "field": FIELD_NAME, "file": FILE_NAME,
              "path": FILE_NAME}
_EXAMPLES = {"model": "model_000", "launch": "launch_000", "field": "weight_decay",
             "file": "params.npz", "path": "lr=0.5/seed_0"}
# what a run writes in its directory (and in each model directory): all that clear_run removes
RUN_NAMES = ("run.json", "events.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "history",
             "error.txt", RUN_LOCK)
MODEL_FILES = ("config.json", "params.npz", "result.json", "history.npz", "extras.npz",
               "curves.png", "curves.error.txt")
RUN_MARKERS = ("run.json", "checkpoint.pt", "history", "result.json", "config.json")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CHUNK_NAME = re.compile(r"^chunk_[0-9]{12}_[0-9]{12}\.npz$")
_TMP = re.compile(r"^\..+\.tmp$")
_held: dict[str, list] = {}          # lock path → [fd, depth], this process's locks
_held_guard = threading.Lock()


# ---------------------------------------------------------------------------------------- locks
class Locked(GrokfastError):
    """Another live process holds the directory: nothing may be written there."""


class DirLock:
    """An exclusive flock on directory/name, re-entrant within this process (a nested train()
    → run() takes it once). `what`: the writer's kind, for the refusal message."""

    def __init__(self, directory, name: str = RUN_LOCK, what: str = "run", create: bool = True):
        self.dir, self.name, self.what, self.create = Path(directory), name, what, create
        self.path = self.dir / name

    def __enter__(self) -> "DirLock":
        with os_errors(self.dir, "lock"):
            listing(self.dir)  # a file there: refused
            if not self.create and not self.dir.is_dir():
                raise GrokfastError(f"{self.dir} does not exist: --resume needs the directory "
                                    f"of an earlier {self.what} (check the path)")
            real_dir(self.dir, create=True)
            key = os.path.realpath(self.path)
            with _held_guard:
                if key in _held:
                    _held[key][1] += 1
                    return self
            refuse_link(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
            try:
                _flock(fd, self._refusal)
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}\n".encode())
            except BaseException:
                os.close(fd)
                raise
            with _held_guard:
                _held[key] = [fd, 1]
        return self

    def _refusal(self, fd: int) -> GrokfastError:
        return refusal(self.dir, self.name, fd)

    def __exit__(self, *exc) -> None:
        key = os.path.realpath(self.path)
        with _held_guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])


def _flock(fd: int, refusal) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no OS lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise refusal(fd) from None


def refusal(directory, name: str, fd: int) -> "Locked":
    """The error for a writer that found directory/name locked (fd: the lock file, open)."""
    for _ in range(100):  # the holder writes its pid right after taking the lock
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if holder:
            break
        time.sleep(0.01)
    holder = holder or "another process"
    pid = holder.split()[-1] if holder.startswith("pid ") else None
    stop = f" (or stop it: kill {pid})" if pid else ""
    what = {SWEEP_LOCK: "sweep", OUTPUT_LOCK: "command"}.get(name, "run")
    return Locked(f"{directory} is being written by {holder} (a {what} holds {name}): wait "
                  f"for it to end{stop}, then run again; the lock goes away with its process, "
                  f"nothing to remove by hand")


def check_unlocked(directory) -> None:
    """Locked (with the holder's pid) when a live process holds a lock of directory."""
    for name in LOCK_NAMES:
        if lock_held(directory, name) and os.path.realpath(Path(directory) / name) not in _held:
            fd = os.open(Path(directory) / name, os.O_RDONLY | _NOFOLLOW)
            try:
                raise refusal(directory, name, fd)
            finally:
                os.close(fd)


def lock_held(directory, name: str = RUN_LOCK) -> bool:
    """True when a live process holds directory/name (probing never blocks, never writes)."""
    path = Path(directory) / name
    if os.path.realpath(path) in _held:
        return True
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def live_status(directory, status: Optional[str], name: str = RUN_LOCK) -> Optional[str]:
    """`status` as read, but a "running" whose writer is gone (no lock held) is "interrupted"."""
    if status == "running" and not lock_held(directory, name):
        return "interrupted"
    return status


# ---------------------------------------------------------------------------------------- ownership
def listing(directory) -> list[str]:
    """Names in directory but lock files ([] when it does not exist)."""
    d = Path(directory)
    if not d.exists() and not d.is_symlink():
        return []
    if not d.is_dir():
        raise GrokfastError(f"{d} is a file, not a directory: choose another --out directory")
    return sorted(n for n in os.listdir(d) if n not in LOCK_NAMES)


def claim_new(directory, kind: str = "run") -> None:
    """A new run/sweep may start in directory only if it is missing or empty."""
    d = Path(directory)
    names = listing(d)
    if not names:
        return
    check_unlocked(d)
    what = holds(names)
    if what is not None:
        cmd = "sweep" if what == "sweep" else "train"
        raise GrokfastError(f"{d} already holds a {what} ({_first(names)}): continue it with "
                            f"`grokfast {cmd} --resume {d}` (resume=...), or choose a new or "
                            f"empty --out directory for a new {kind}")
    raise GrokfastError(f"{d} holds files grokfast did not write ({_first(names)}): a new {kind} "
                        f"needs a missing or empty directory; choose another --out")


def holds(names) -> Optional[str]:
    """"sweep" or "run" when a directory listing `names` holds one, else None."""
    if "plan.json" in names:
        return "sweep"
    if any(n in names for n in RUN_MARKERS) or any(MODEL_NAME.match(n) for n in names):
        return "run"
    return None


def _first(names) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def check_name(name, what: str = "model", where: str = "run.json") -> str:
    """The one validator of a name read back from a file `where` (run.json, plan.json, a
    checksum table, …): `name` unchanged when it is a plain name of kind `what` (NAME_RULES) —
    never absolute, never "..", never a way out of the directory — else GrokfastError naming
    the file."""
    rule = NAME_RULES[what]
    parts = name.split("/") if isinstance(name, str) and what == "path" else [name]
    if not all(isinstance(n, str) and rule.match(n) for n in parts):
        raise GrokfastError(f"{where} names {what} {name!r}, not a name grokfast writes (like "
                            f"{_EXAMPLES[what]!r}; a path outside the directory, or a damaged "
                            f"file): refusing to use it; restore the file or start again elsewhere")
    return name


def check_names(names, what: str = "model", where: str = "run.json") -> list:
    """The directory names read from `where` (a non-empty list of distinct names), each through
    check_name."""
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise GrokfastError(f"{where}: its {what} list {names!r} is damaged (expected distinct "
                            f"names like {_EXAMPLES[what]}): restore the file or start a new run "
                            f"elsewhere")
    for n in names:
        check_name(n, what, where)
    return names


def refuse_link(path) -> None:
    """GrokfastError when `path` is a symbolic link (grokfast never makes one)."""
    p = Path(path)
    if p.is_symlink():
        raise GrokfastError(f"{p} is a symbolic link, which grokfast never makes; it writes "
                            f"only its own files: remove the link (restore the real file if you "
                            f"moved it) and run again")


def real_dir(path, create: bool = False) -> Path:
    """`path` as a directory that is not a symlink, made (with parents) when create."""
    p = Path(path)
    refuse_link(p)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def open_append(path):
    """A text file opened for appending, never through a symlink."""
    refuse_link(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


def clear_run(directory) -> None:
    """Remove what a run wrote in directory (only its own names), so that it starts over there;
    everything is checked before anything is removed."""
    d = Path(directory)
    files, dirs = [], []
    for name in listing(d):
        p = d / name
        if (_TMP.match(name) or name in MODEL_FILES or name in RUN_NAMES) and name != "history":
            refuse_link(p) if p.is_dir() else files.append(p)
            continue
        if name == "history" or MODEL_NAME.match(name):
            real_dir(p)
            ours = _CHUNK_NAME if name == "history" else re.compile(
                "^(" + "|".join(map(re.escape, MODEL_FILES)) + ")$")
            for sub in os.listdir(p):
                if not (ours.match(sub) or _TMP.match(sub)) or (p / sub).is_dir():
                    p = p / sub
                    break
                files.append(p / sub)
            else:
                dirs.append(p)
                continue
        raise GrokfastError(f"{p} was not written by grokfast: the run in {d} cannot start "
                            f"over there; move it away or choose another --out")
    for p in files:
        p.unlink()
    for p in dirs:
        p.rmdir()


# ---------------------------------------------------------------------------------------- reading
def read_json(path, what: str = "") -> dict:
    """JSON from a file grokfast wrote; GrokfastError naming it when unreadable or garbled."""
    p = Path(path)
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GrokfastError(f"{p} is damaged ({type(e).__name__}: {e}){what}: restore it, or "
                            f"start the run again elsewhere") from None
    if not isinstance(obj, dict):
        raise GrokfastError(f"{p} is damaged (not a JSON object){what}: restore it, or start "
                            f"the run again elsewhere")
    return obj


# ---------------------------------------------------------------------------------------- OS errors
_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space, then continue with --resume "
                  "(everything up to the last checkpoint is kept)",
    errno.EDQUOT: "disk quota exceeded: free some space, then continue with --resume",
    errno.EROFS: "the file system is read-only: choose a writable --out directory",
    errno.EACCES: "permission denied: choose a directory you can write (--out)",
    errno.EPERM: "operation not permitted: choose a directory you can write (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another --out",
    errno.EISDIR: "a directory stands where grokfast writes a file: choose another --out",
    errno.ELOOP: "a symbolic link stands where grokfast writes (it never follows links): "
                 "remove it and run again",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter --out",
}


def translate(e: OSError, directory=None, action: str = "write") -> GrokfastError:
    where = e.filename or directory
    advice = _ADVICE.get(e.errno, "check the path and the disk, then run again")
    return GrokfastError(f"cannot {action} {where}: {e.strerror or e}; {advice}")


@contextlib.contextmanager
def os_errors(directory=None, action: str = "write") -> Iterator[None]:
    """OSError inside → GrokfastError saying what happened and what to do."""
    try:
        yield
    except OSError as e:
        raise translate(e, directory, action) from None



@contextlib.contextmanager
def owned(out, create: bool = True, new: bool = False):
    """The run directory `out` held for this writer (an OS lock), its OS errors translated;
    create=False (a resume): it must exist. new: a new run, refused (before the lock file is
    written, and again once it is held) unless `out` is missing or empty. out=None: nothing."""
    if out is None:
        yield
        return
    with os_errors(out):
        if new:
            claim_new(out)
        with DirLock(out, what="run", create=create):
            if new:
                claim_new(out)
            yield
