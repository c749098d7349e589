"""split.CoreSplit in the stepper: a model cut over 2 or 3 threads (the forward, the loss gradient
and the backward in phases by rows, columns and hidden units) steps with the one-thread bits, for
every loss (MSE, cross-entropy, stablemax) by rows in the forward's phase and the AdamW update
by element ranges (forced on with 3 threads: these models are below optim.SPLIT_ADAM_MIN), one
model or several (each split in turn), frozen models untouched; every statistic and evaluation
too."""
import numpy as np
import pytest
import torch

import grokfast
from grokfast import Config
from grokfast.backends.torch import TorchStepper, optim
from bitwise import assert_bitwise

BASE = Config(p=31, pairs="ordered", encoding="concat", train_frac=0.3, n_test=None, width=128,
              optimizer="adamw", lr=1e-3, weight_decay=1.0, log_every=2, eval_every=4)
CASES = {
    "mse-x2-float32": dict(activation="quadratic", loss="mse"),
    "mse-sum-relu-float64": dict(activation="relu", loss="mse", loss_reduction="sum",
                                 dtype="float64"),
    "ce-relu-float32": dict(activation="relu", loss="cross_entropy"),
    "stablemax-x2-float64": dict(activation="quadratic", loss="stablemax", dtype="float64",
                                 loss_dtype="float64"),
}


@pytest.mark.parametrize("models", [1, 2])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_core_split_steps_with_the_one_thread_bits(case, threads, models, monkeypatch):
    if threads == 3:
        monkeypatch.setattr(optim, "SPLIT_ADAM_MIN", 0)
    configs = [BASE.replace(seed=s, **CASES[case]) for s in range(models)]
    data = grokfast.make_dataset(configs[0])
    runs = []
    for t in (1, threads):
        st = TorchStepper(configs, data, torch.device("cpu"), threads=t, native=False)
        assert st.N * st.width >= 32768 and (st.core is not None) == (t > 1)
        assert st.row_loss is not None                      # every portable loss by rows
        assert st.opt.split is st.core                      # AdamW by element ranges too
        frozen = np.arange(models) != models - 1                # the last model sits out steps 3–6
        rows = [st.advance(0, 3, np.ones(models, bool)), st.advance(3, 4, frozen),
                st.advance(7, 2, np.ones(models, bool))]
        runs.append((st.params(), rows, st.state_dict()))
    assert_bitwise(runs[1][0], runs[0][0], "params")
    assert_bitwise(runs[1][1], runs[0][1], "rows")
    assert_bitwise(runs[1][2], runs[0][2], "state")
    assert np.isfinite(runs[0][1][0]["test_loss"][:, 0]).all()


def test_run_finishes_every_part_before_it_raises_a_workers_error():
    """An error in a worker's part reaches the caller, after the caller's own part has run."""
    from grokfast.backends.torch.split import CoreSplit
    core, ran = CoreSplit(None, 2), []

    def fail():
        raise ValueError("worker part")
    with pytest.raises(ValueError, match="worker part"):
        core.run([[(fail, ())], [(ran.append, ("caller",))]])
    assert ran == ["caller"]
    core.run([[(ran.append, ("worker",))], [(ran.append, ("caller",))]])
    assert sorted(ran[1:]) == ["caller", "worker"]


def test_cuts_put_inner_bounds_on_multiples():
    from grokfast.backends.torch.split import cuts
    assert cuts(2823, 2, 16) == [(0, 1424), (1424, 2823)]
    assert cuts(512, 2, 16) == [(0, 256), (256, 512)]
    assert cuts(128, 3, 16) == [(0, 48), (48, 96), (96, 128)]
    assert cuts(5, 2, 16) == [(0, 5)]
    assert cuts(0, 2, 16) == []
