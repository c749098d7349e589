"""Red team, divergence between recorded rows and at the very last step: caught on the
parameters themselves at every chunk, reported with the step range in the Result, result.json,
the sweep row (diverged, diverged_steps) and the exit status (1)."""
import json

import numpy as np
import pytest
import torch
from redteam_helpers import run_cli

import grokfast
from grokfast import Config, Result

# The case was lr 1e4; there lr·weight_decay = 1, and the portable GD step (θ − 1·θ in
# separate roundings) zeroes θ exactly instead of diverging. 3e4 diverges under both numerics.
WILD = Config.preset("paper-real", lr=3e4)



@pytest.fixture(scope="module")
def first_bad():
    """The first step s with θ_s non-finite at lr 3e4 (every step recorded)."""
    r = grokfast.train(WILD.replace(steps=30, log_every=1, eval_every=1), backend="torch")
    assert r.diverged
    return int(r.steps_done)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_divergence_at_exactly_the_last_step(backend):
    every = grokfast.train(WILD.replace(steps=30, log_every=1, eval_every=1), backend=backend)
    s = int(every.steps_done)  # the first step whose loss (or θ) is not finite
    cfg = WILD.replace(steps=s, log_every=s, eval_every=s)  # one row, step 0; θ_s is the end
    r = grokfast.train(cfg, backend=backend)
    assert r.diverged and f"within steps 1–{s}" in r.diverged, r.diverged
    assert r.stop_reason == "diverged" and r.steps_done == s
    assert not r.final or not np.isfinite(r.final["train_loss"])
    calm = grokfast.train(cfg.replace(steps=s - 1), backend=backend)
    assert calm.diverged is None and bool(torch.isfinite(calm.params["W1"]).all())


@pytest.mark.parametrize("steps", [99, 101, 150])
def test_divergence_between_rows_on_the_cli(tmp_path, capsys, steps):
    d = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--preset", "paper-real", "--set", "lr=3e4",
                             "--set", f"steps={steps}", "--backend", "torch", "--quiet", "--out", d)
    assert code == 1, err
    meta = json.loads((d / "result.json").read_text())
    assert meta["diverged"] and "within steps" in meta["diverged"] and "DIVERGED" in out
    assert Result.load(d).diverged == meta["diverged"]


def test_sweep_row_says_diverged_with_the_range(tmp_path, first_bad):
    s = first_bad
    cfg = WILD.replace(steps=s, log_every=s, eval_every=s)
    sw = grokfast.sweep(cfg, grid={"lr": [1.0, 3e4]}, out=tmp_path / "sw", figures=False)
    calm, wild = sw.table
    assert calm["diverged"] is False and calm["diverged_steps"] is None
    assert wild["diverged"] is True and wild["diverged_steps"] == f"1–{s}"
    assert wild["stop_reason"] == "diverged" and wild["steps_done"] == s


def test_one_model_of_a_batch_diverges_between_rows(first_bad):
    s = first_bad
    cfg = WILD.replace(steps=s + 50, log_every=1000, eval_every=1000)
    runs = grokfast.engine.run([cfg.replace(lr=1.0), cfg], backend="torch", single=False)
    assert runs[0].diverged is None and runs[0].steps_done == s + 50
    assert runs[1].diverged and runs[1].steps_done <= s + 50


def test_divergence_survives_a_resume(tmp_path, first_bad):
    s = first_bad
    cfg = WILD.replace(steps=4 * s, log_every=1000, eval_every=1000)
    d = tmp_path / "run"
    grokfast.engine.run([cfg.replace(lr=1.0), cfg], backend="torch", single=False, out=d,
                 chunk_steps=s, checkpoint_every=2 * s, max_steps=2 * s)
    rs = grokfast.train(None, resume=d)
    assert rs[0].diverged is None and rs[1].diverged and "within steps" in rs[1].diverged
