"""The command line end to end, in a temporary directory, as a user runs it."""
import subprocess
import sys

import numpy as np
import pytest

from grokfast import Result


def grokfast_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "grokfast", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_train_then_show(tmp_path, backend):
    out = tmp_path / "run"
    p = grokfast_cli("train", "--preset", "paper-real", "--set", "steps=600", "--set", "log_every=50",
                     "--set", "eval_every=100", "--backend", backend, "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "memorized (train acc 1) at step: " in p.stdout and f"saved to {out}" in p.stdout
    r = Result.load(out)
    assert r.config.steps == 600 and r.memorization_step is not None
    s = grokfast_cli("show", str(out), cwd=tmp_path)
    assert s.returncode == 0 and "memorized" in s.stdout and "p=11" in s.stdout


def test_batch_of_seeds(tmp_path):
    out = tmp_path / "seeds"
    p = grokfast_cli("train", "--set", "steps=200", "--seeds", "0:3", "--backend", "reference",
                     "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    loaded = [Result.load(out / f"model_{i:03d}") for i in range(3)]
    assert [r.config.seed for r in loaded] == [0, 1, 2]
    assert "seed 2" in grokfast_cli("show", str(out), cwd=tmp_path).stdout


@pytest.mark.parametrize("args, words", [
    (["train", "--set", "lrr=1"], "did you mean 'lr'"),
    (["train", "--preset", "paper_real"], "did you mean 'paper-real'"),
    (["train", "--set", "operation=div", "--set", "p=12"], "prime"),
    (["train", "--set", "width=0"], "at least 1 unit"),
    (["train", "--backend", "trition"], "did you mean 'triton'"),
    (["train", "--seeds", "a:b"], "--seeds"),
    (["show", "."], "no saved run"),
])
def test_bad_input_exits_2_without_traceback(tmp_path, args, words):
    p = grokfast_cli(*args, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert words in p.stderr and "Traceback" not in p.stderr


def test_divergence_is_reported_and_saved(tmp_path):
    out = tmp_path / "div"
    p = grokfast_cli("train", "--set", "loss_reduction=sum", "--set", "activation=quadratic",
                     "--set", "steps=3000", "--set", "log_every=1", "--set", "eval_every=1",
                     "--backend", "reference", "--out", str(out), cwd=tmp_path)
    assert p.returncode == 1 and "DIVERGED" in p.stdout
    r = Result.load(out)
    # every recorded step before the divergence is kept, each finite; the message names the step
    steps, loss = np.asarray(r.history["step"]), np.asarray(r.history["train_loss"])
    assert r.diverged and f"at step {r.steps_done}" in r.diverged
    assert r.steps_done >= 2 and np.array_equal(steps, np.arange(r.steps_done))
    assert np.isfinite(loss).all() and loss[-1] > 10 * loss[0]
