import numpy as np
import pytest
import torch

import grokfast
from grokfast import Config, GrokfastError, Result


def test_save_load_round_trip_is_bitwise(tmp_path):
    c = Config(p=7, width=16, n_test=5, steps=40, log_every=4, eval_every=8, seed=2)
    r = grokfast.reference.train(c)
    r.save(tmp_path / "run")
    for name in ("config.json", "history.npz", "params.npz", "result.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    back = Result.load(tmp_path / "run")
    assert back.config == c and back.backend == r.backend and back.steps_done == 40
    assert set(back.history) == set(grokfast.STAT_NAMES)
    for k in r.history:
        assert np.array_equal(r.history[k], back.history[k], equal_nan=True)
        assert r.history[k].dtype == back.history[k].dtype
    for k in ("W1", "W2"):
        assert torch.equal(r.params[k], back.params[k]) and back.params[k].dtype == torch.float32
    assert back.memorization_step == r.memorization_step and back.grok_step == r.grok_step
    assert r.W1.shape == (7, 16) and r.W2.shape == (16, 7)  # the paper's orientation


def test_milestones_from_history():
    c = Config()
    h = {k: np.full(5, np.nan) for k in grokfast.STAT_NAMES}
    h["step"] = np.arange(5) * 100.0
    h["train_acc"] = np.array([0.1, 0.9, 1.0, 1.0, 1.0])
    h["test_acc"] = np.array([0.0, np.nan, 0.5, np.nan, 0.995])
    r = Result(config=c, history=h, params={})
    assert r.memorization_step == 200 and r.grok_step == 400
    assert Result(config=c.replace(grok_threshold=1.0), history=h, params={}).grok_step is None


def test_load_of_a_non_run_directory_says_what_to_do(tmp_path):
    with pytest.raises(GrokfastError, match="not a grokfast run directory"):
        Result.load(tmp_path)
