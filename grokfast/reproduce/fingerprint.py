"""Numerics fingerprints: SHA-256 of the parameters and history of a few fixed short runs, and the
golden values committed in grokfast/reproduce/golden_hashes.json that every machine must reproduce.

    grokfast fingerprint                 # the golden runs on this machine, each against its golden
    grokfast.numerics_fingerprint()      # the same, as a dict

With numerics "portable" (the default) the torch backend computes the same bits on every x86-64
CPU, so a hash that differs from the golden one means a changed experiment or a broken promise,
never a changed CPU. The golden values are regenerated 
only for a deliberate change of numerics, noted in the README's changelog of results:
`grokfast fingerprint --write`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from grokfast.config import Config
from grokfast.engine import run
from grokfast.model import STAT_NAMES

GOLDEN_FILE = Path(__file__).with_name("golden_hashes.json")

_PAPER = Config.preset("paper-real")
# name → (base config, per-model changes): short runs covering both dtypes, every statistic,
# the large-model shapes (gromov: width 512, N = 2823, AdamW, x²) and a multi-model launch
GOLDEN_RUNS = {
    "paper-real-float32": (_PAPER.replace(steps=400, log_every=10, eval_every=50), [{}]),
    "paper-real-float64": (_PAPER.replace(steps=200, log_every=10, eval_every=50,
                                          dtype="float64"), [{}]),
    "gromov-width-512": (Config.preset("gromov").replace(steps=3, log_every=1, eval_every=1),
                         [{}]),
    "paper-real-16-models": (_PAPER.replace(steps=100, log_every=10, eval_every=50),
                             [dict(seed=i, lr=1.0 + 0.02 * i) for i in range(16)]),
    "ce-adamw-ema-orthograd": (
        Config(p=13, pairs="ordered", encoding="concat", n_test=None, train_frac=0.5, width=48,
               loss="cross_entropy", optimizer="adamw", lr=1e-2, grad_filter="ema",
               orthograd=True, steps=40, log_every=2, eval_every=4), [{}, dict(seed=1)]),
    "stablemax-sgd-nesterov-fixed-norm-ma": (
        Config(p=13, width=40, loss="stablemax", optimizer="sgd", lr=0.3, momentum=0.9,
               nesterov=True, fixed_norm=True, grad_filter="ma", filter_window=5, steps=40,
               log_every=2, eval_every=4, activation="quadratic"), [{}]),
}


def run_hash(results) -> str:
    """SHA-256 over every model's W1, W2 (in the working dtype), history columns (float64) and
    final metrics, in order."""
    h = hashlib.sha256()
    for r in results:
        for layer in ("W1", "W2"):
            h.update(torch.as_tensor(r.params[layer]).contiguous().numpy().tobytes())
        for name in STAT_NAMES:
            h.update(np.ascontiguousarray(r.history[name], dtype=np.float64).tobytes())
        h.update(json.dumps(r.final, sort_keys=True).encode())
    return h.hexdigest()


def run_configs(configs, backend: str = "torch") -> list:
    """One launch of `configs` (no run directory, no progress bar): its Results."""

    return run(configs, backend=backend)


def golden_run(name: str, backend: str = "torch", device: str = "cpu") -> str:
    """The hash of golden run `name` trained here (a fresh launch, no run directory)."""
    base, changes = GOLDEN_RUNS[name]
    return run_hash(run_configs([base.replace(device=device, **ch) for ch in changes], backend))


def golden_hashes() -> dict:
    """The committed golden hashes: {run name: SHA-256}."""
    return json.loads(GOLDEN_FILE.read_text())["hashes"]


def numerics_fingerprint(names=None, backend: str = "torch", device: str = "cpu",
                         verbose: bool = True) -> dict:
    """Train the golden runs `names` (default: all) here and compare each with its golden hash:
    {name: {"hash", "golden", "match"}}; prints one line per run when verbose. The golden values
    hold for the torch backend on a CPU with numerics "portable"; on a GPU the hashes are for
    comparing GPUs of one model with each other (no golden value)."""
    gold = golden_hashes() if backend == "torch" and device == "cpu" else {}
    out = {}
    for name in names or list(GOLDEN_RUNS):
        digest = golden_run(name, backend, device)
        out[name] = {"hash": digest, "golden": gold.get(name), "match": gold.get(name) == digest}
        if verbose:
            verdict = ("matches golden" if out[name]["match"] else
                       "DIFFERS from golden " + gold[name][:16] if name in gold else "no golden")
            print(f"{name:40s} {digest[:16]}  {verdict}", flush=True)
    return out


def write_golden() -> None:
    """Regenerate grokfast/reproduce/golden_hashes.json from this machine (a deliberate change of numerics
    only; note it in the README's changelog of results)."""
    hashes = {name: golden_run(name) for name in GOLDEN_RUNS}
    GOLDEN_FILE.write_text(json.dumps({"torch": torch.__version__, "hashes": hashes}, indent=1)
                           + "\n")
    print(json.dumps(hashes, indent=1))

