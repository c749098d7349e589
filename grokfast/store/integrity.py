"""Checksums of a run directory's files, recorded where each file is referenced, verified on read.

* History chunks: the SHA-256 of every chunk file is kept by the HistoryWriter, saved in each
  checkpoint (``"chunks"``: name → hex digest, the chunks the checkpoint's rows stand on) and in
  ``run.json`` (``"chunks"``, updated at every checkpoint and at the end, for readers).
* The checkpoint carries its own SHA-256 in its header (grokfast.checkpoint).
* Result files: ``result.json`` records the SHA-256 of ``config.json``, ``params.npz``,
  ``history.npz`` and ``extras.npz`` (``"checksums"``).

Resume (grokfast.resume.verified_checkpoint) takes the newest checkpoint whose own checksum and
whose history chunks all verify (`chunk_problems`), else refuses, naming the damaged file.
Readers (`verify_file`) check a file once per (path, size, mtime). Files written before these
checksums existed carry none: they are read with the structural checks alone (zip CRC, JSON).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from grokfast.errors import GrokfastError

from .ownership import check_name

_verified: dict[tuple, str] = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_problem(path, expected: Optional[str]) -> Optional[str]:
    """None when `path` exists and (if expected is given) has that SHA-256; else what is wrong."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return "it is missing"
    if expected is None:
        return None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == expected:
        return None
    actual = sha256_file(p)
    if actual != expected:
        return "its contents do not match the checksum recorded for it (truncated or garbled)"
    _verified[key] = actual
    return None


def verify_file(path, expected: Optional[str], where: str, todo: str) -> None:
    """GrokfastError naming `path` unless it matches the checksum recorded in `where`."""
    problem = file_problem(path, expected)
    if problem is not None:
        raise GrokfastError(f"{path} is damaged: {problem} (recorded in {where}); {todo}")


def checksum_table(sums, where) -> dict:
    """A checksum table read back from `where` (name → hex digest), its names through check_name;
    GrokfastError naming `where` when it is not such a table."""
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise GrokfastError(f"{where} is damaged (its checksums are not a table of file names and "
                            f"SHA-256 digests): restore it from a copy, or train the run again")
    for name in sums:
        check_name(name, "file", where)
    return sums


def chunk_problems(launch, sums: dict, where="the checkpoint") -> list[str]:
    """'name: problem' for every chunk of `sums` (name → digest) that fails its checksum."""
    out = []
    for name, digest in sorted(checksum_table(sums, where).items()):
        problem = file_problem(Path(launch) / "history" / name, digest)
        if problem is not None:
            out.append(f"history/{name} ({problem})")
    return out


def result_checksums(directory, names) -> dict:
    d = Path(directory)
    return {n: sha256_file(d / n) for n in names if (d / n).is_file()}


def check_result_files(directory, meta: dict) -> None:
    """Verify the files a result.json records checksums for (none recorded: nothing to check)."""
    d = Path(directory)
    sums = checksum_table(meta.get("checksums") or {}, d / "result.json")
    for name, digest in sums.items():
        verify_file(d / name, digest, d / "result.json",
                    "restore it from a copy, or train the run again")
