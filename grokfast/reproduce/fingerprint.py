"""Numerics fingerprints: SHA-256 of the parameters and history of a few fixed short runs, and the
golden values committed in grokfast/reproduce/golden_hashes.json that every machine must reproduce.

    grokfast fingerprint                 # the golden runs on this machine, each against its golden
    grokfast.numerics_fingerprint()      # the same, as a dict

With numerics "portable" (the default) the torch backend computes the same bits on every x86-64
CPU, so a hash that differs from the golden one means a changed experiment or a broken promise,
never a changed CPU. The golden values are regenerated 
only for a deliberate change of numerics, noted in the README's changelog of results:
`grokfast fingerprint --write grokfast/reproduce/golden_hashes.json` in a checkout (the path
named in full: it never happens by mistake). The file is written under the rule of every
command's output (grokfast.store.output.command_output): by rename, never through a link, only
over a golden-hashes file, never inside an installed package (site-packages).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from grokfast.config import Config
from grokfast.engine import run
from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES
from grokfast.store.output import command_output
from grokfast.store.ownership import read_json

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


def check_golden_target(path) -> Path:
    """The file `fingerprint --write` may replace: not inside an installed package, not a link,
    and missing or a golden-hashes file already; GrokfastError saying what to do otherwise."""
    p = Path(path)
    if any(part in ("site-packages", "dist-packages") for part in p.resolve().parts):
        raise GrokfastError(f"{p} is inside an installed package: regenerate the golden hashes "
                            f"in a checkout of grokfast (pip install -e .) and commit them there")
    if p.is_symlink():
        raise GrokfastError(f"{p} is a symbolic link, which grokfast never writes through: "
                            f"pass the real file")
    if p.exists() and not (p.is_file() and isinstance(read_json(p).get("hashes"), dict)):
        raise GrokfastError(f"{p} is not a golden-hashes file (JSON with \"hashes\"): "
                            f"--write replaces only such a file; pass its path, or a new name")
    return p


def write_golden(path) -> dict:
    """Regenerate the golden hashes into the file `path` (grokfast/reproduce/golden_hashes.json
    for a deliberate change of numerics only; note it in the README's changelog of results):
    checked first (check_golden_target), then written by rename. Returns {run name: SHA-256}."""
    p = check_golden_target(path)
    hashes = {name: golden_run(name) for name in GOLDEN_RUNS}
    with command_output(p.parent, "fingerprint --write", claim=False, create=False,
                        lock=None) as o:
        check_golden_target(p)
        o.write_text(p.name, json.dumps({"torch": torch.__version__, "hashes": hashes},
                                        indent=1) + "\n")
    print(json.dumps(hashes, indent=1))
    return hashes
