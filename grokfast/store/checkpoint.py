"""Checkpoints of a launch: everything needed to continue it bitwise, written atomically.

``L/checkpoint.pt`` holds the stepper's state_dict (parameters, optimizer and filter state), the
step, the history position, the loop's own state (active models, milestones, early-stop streaks),
the backend name, every model's config, the parameters once more in a backend-free form (for
reading partial runs) and the RNG states (torch, CUDA, numpy, random).

File layout: MAGIC, the SHA-256 of the payload (32 bytes), the payload length (8 bytes, little
endian), then the payload (torch.save, read back with weights_only=True). A truncated or garbled
file fails the length or hash check and is refused with GrokfastError.

Writing: temporary file, fsync, the current checkpoint hard-linked (or copied) to
``checkpoint.prev.pt``, then the temporary file renamed over ``checkpoint.pt`` and the directory
fsynced. At every instant ``checkpoint.pt`` is a complete checkpoint, the old or the new one, so a
SIGKILL (or a second Ctrl-C) in the middle of a write leaves the previous one loadable.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from grokfast.config import Config, field_names
from grokfast.errors import GrokfastError

from .history import atomic_write, sync_dir

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
MAGIC = b"GROKFAST-CHECKPOINT/1\n"
# 2: the stepper state in the one layout of grokfast.stepper; format 1 is converted on load
FORMAT = 2
_HEADER = len(MAGIC) + 32 + 8


def _encode(obj):
    """Containers the safe unpickler refuses (deque, numpy arrays) → tagged dicts it accepts."""
    if isinstance(obj, deque):
        return {"__deque__": [_encode(v) for v in obj], "maxlen": obj.maxlen}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_encode(v) for v in obj)
    return obj


def _decode(obj):
    if isinstance(obj, dict):
        if "__deque__" in obj and set(obj) == {"__deque__", "maxlen"}:
            return deque((_decode(v) for v in obj["__deque__"]), maxlen=obj["maxlen"])
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    return obj


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "random": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(launch: Path, state: dict) -> Path:
    """Write `state` to launch/checkpoint.pt atomically, keeping the previous one as checkpoint.prev.pt."""
    launch = Path(launch)
    buf = io.BytesIO()
    torch.save(_encode({"format": FORMAT, **state}), buf)
    payload = buf.getvalue()
    header = MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "little")
    path, prev = launch / CHECKPOINT, launch / PREVIOUS

    def write(f):
        f.write(header)
        f.write(payload)

    if path.exists():
        _keep_previous(path, prev)
    atomic_write(path, write)
    sync_dir(launch)
    return path


def _keep_previous(path: Path, prev: Path) -> None:
    """prev ← path without ever leaving prev half-written: a hard link, else an atomic copy."""
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, prev)
        tmp.unlink(missing_ok=True)  # prev was already this file: rename(2) did nothing
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(path, "rb") as src:
            atomic_write(prev, lambda f: shutil.copyfileobj(src, f))


def load_checkpoint(launch: Path, name: str = CHECKPOINT) -> dict:
    """Read and verify a checkpoint; GrokfastError saying what to do when missing or corrupt."""
    path = Path(launch) / name
    if not path.is_file():
        raise GrokfastError(f"{Path(launch)} has no {name}: it is not a run directory written by "
                            f"`grokfast train --out DIR` (or the run was killed before its first "
                            f"checkpoint); start a new run instead of resuming")
    data = path.read_bytes()
    problem = None
    if len(data) < _HEADER or not data.startswith(MAGIC):
        problem = "it does not start with a grokfast checkpoint header"
    else:
        digest = data[len(MAGIC): len(MAGIC) + 32]
        size = int.from_bytes(data[len(MAGIC) + 32: _HEADER], "little")
        payload = data[_HEADER:]
        if len(payload) != size:
            problem = f"it is truncated ({len(payload)} of {size} payload bytes)"
        elif hashlib.sha256(payload).digest() != digest:
            problem = "its contents do not match their checksum (the file is garbled)"
    if problem is None:
        try:
            state = _decode(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
        except Exception as e:  # a payload with a valid hash that torch cannot read
            problem = f"torch cannot read it ({type(e).__name__}: {e})"
    if problem is not None:
        hint = ""
        if name == CHECKPOINT and (Path(launch) / PREVIOUS).is_file():
            hint = (f"; the previous checkpoint {PREVIOUS} is kept beside it: move it over "
                    f"{CHECKPOINT} to resume from that earlier step")
        raise GrokfastError(f"checkpoint {path} is corrupt: {problem}{hint}")
    if state.get("format") == 1:
        # format 1: the same file, the stepper state in each backend's own key names
        if "stepper" in state:
            state["stepper"] = upgrade_state_v1(state["stepper"], state.get("backend"),
                                                state["step"])
        state["format"] = FORMAT
    if state.get("format") != FORMAT:
        raise GrokfastError(f"checkpoint {path} has format {state.get('format')!r}; this grokfast "
                            f"reads formats 1 and {FORMAT}: resume it with the version that "
                            f"wrote it")
    return state


def check_resumable(ckpt: dict, configs: Sequence[Config]) -> None:
    """GrokfastError unless `configs` are the checkpoint's, but for steps (≥ its step)."""
    saved = [Config.from_dict(d) for d in ckpt["configs"]]
    if len(saved) != len(configs):
        raise GrokfastError(f"the checkpoint holds {len(saved)} models, not {len(configs)}: resume "
                            f"the launch as it was saved")
    for a, b in zip(saved, configs):
        diffs = [f"{f}={getattr(b, f)!r} (checkpoint: {getattr(a, f)!r})" for f in field_names()
                 if f != "steps" and getattr(a, f) != getattr(b, f)]
        if diffs:
            raise GrokfastError(
                f"cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}. "
                f"Resuming may only change steps: pass config=None (or `grokfast train --resume "
                f"DIR` without other --set) to continue as saved, or start a new run elsewhere")
        if b.steps < ckpt["step"]:
            raise GrokfastError(f"steps={b.steps} is below the checkpoint's step {ckpt['step']}: "
                                f"resuming can only keep or extend steps")


def upgrade_state_v1(state: dict, backend: str, step: int) -> dict:
    """A stepper state saved by checkpoint format 1 in the layout of grokfast.backends.base (format 2). `backend`
    and `step`: the checkpoint's backend name and step (triton kept its MA window in slots
    s % W of the global step s)."""
    state = dict(state)
    if backend == "torch" and "ring" in state:
        # [W, M, P] with slot ring_pos the oldest → [M, W, P] oldest first
        ring = state.pop("ring").roll(-int(state.pop("ring_pos")), dims=0)
        state["ma_window"] = ring.transpose(0, 1).contiguous()
    elif backend == "triton" and "W1" in state:
        W1, W2 = state.pop("W1"), state.pop("W2")
        M = W1.shape[0]
        state = {"backend": "triton", "theta": torch.cat([W1.reshape(M, -1), W2.reshape(M, -1)], 1),
                 "steps_taken": np.full(M, step, dtype=np.int64), **state}
        if "buf" in state:
            state["momentum_buffer"] = state.pop("buf")
        if "window" in state:
            window = state.pop("window")
            state["ma_window"] = window.roll(-(step % window.shape[1]), dims=1)
        if "ema" in state or "ma_window" in state:
            state["filter_count"] = np.full(M, step, dtype=np.int64)
    return state
