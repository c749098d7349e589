"""The native chunk loop (grokfast/backends/torch/native.py, kernels/cpu/loop.py) against the
per-step path of the same stepper: bitwise equal histories, parameters and state on every covered
combination, at chunk boundaries that divide neither the log nor the eval interval; the per-step
path for everything it does not cover."""
import numpy as np
import pytest
import torch
from bitwise import assert_bitwise

import grokfast
from grokfast import Config, make_dataset
from grokfast.backends.torch import ShardedStepper, TorchStepper, make_stepper
from grokfast.backends.torch.native import why_not
from grokfast.model import STAT_NAMES

CPU = torch.device("cpu")
# small shapes with paper-real's structure; log every 5, eval every 10 steps, chunks of 7 and 11
BASE = Config(p=7, width=16, n_test=7, seed=3, split_seed=1, log_every=5, eval_every=10)
CHUNKS = (7, 11, 3, 16)

COVERED = {
    "mse-mean-gd-wd-float32": dict(dtype="float32"),
    "mse-mean-gd-wd-float64": dict(dtype="float64"),
    "mse-sum-gd-float64": dict(dtype="float64", loss_reduction="sum", lr=0.05),
    "mse-sum-gd-float32": dict(dtype="float32", loss_reduction="sum", lr=0.05),
    "no-weight-decay": dict(weight_decay=0.0),
    "warmup-float32": dict(dtype="float32", warmup_steps=12),
    "sgd-momentum-warmup": dict(optimizer="sgd", momentum=0.9, lr=0.3, warmup_steps=8),
    "sgd-nesterov-float32": dict(optimizer="sgd", momentum=0.8, nesterov=True, lr=0.3,
                                 dtype="float32"),
    "sgd-no-momentum-no-wd": dict(optimizer="sgd", weight_decay=0.0),
    "ema-gd-float32": dict(grad_filter="ema", filter_alpha=0.9, filter_lamb=2.0,
                           dtype="float32"),
    "ema-sgd-momentum-normalized-lr": dict(grad_filter="ema", optimizer="sgd", momentum=0.9,
                                           lr=0.3, filter_normalize_lr=True),
    "ma-mean-warmup-gd": dict(grad_filter="ma", filter_window=4, filter_lamb=3.0),
    "ma-sum-no-warmup-float32": dict(grad_filter="ma", filter_window=5, filter_type="sum",
                                     filter_warmup=False, filter_lamb=0.5, dtype="float32"),
    "quadratic-concat-ordered": dict(activation="quadratic", encoding="concat", pairs="ordered",
                                     n_test=None, train_frac=0.6, lr=0.1),
    "adamw-float32": dict(optimizer="adamw", lr=1e-2, weight_decay=1.0, dtype="float32"),
    "adamw-float64-warmup-ema": dict(optimizer="adamw", lr=1e-2, weight_decay=0.5,
                                     betas=(0.9, 0.98), warmup_steps=9, grad_filter="ema",
                                     filter_alpha=0.9, filter_lamb=2.0, dtype="float64"),
    "adam-wd-float32-ma": dict(optimizer="adam", lr=3e-3, weight_decay=0.01, grad_filter="ma",
                               filter_window=4, filter_lamb=1.0, dtype="float32"),
    "adam-no-wd-float64": dict(optimizer="adam", lr=1e-2, weight_decay=0.0, eps=1e-6,
                               dtype="float64"),
    "orthograd-gd-float32": dict(orthograd=True, dtype="float32"),
    "orthograd-adamw-float64": dict(orthograd=True, optimizer="adamw", lr=1e-2, dtype="float64"),
    "orthograd-adamw-quadratic-float32": dict(orthograd=True, optimizer="adamw", lr=1e-2,
                                              activation="quadratic", dtype="float32"),
    "fixed-norm-sgd-float32": dict(fixed_norm=True, optimizer="sgd", momentum=0.9, lr=0.3,
                                   dtype="float32"),
    "fixed-norm-sgd-nesterov-ema-float64": dict(fixed_norm=True, optimizer="sgd", momentum=0.8,
                                                nesterov=True, lr=0.3, grad_filter="ema",
                                                dtype="float64"),
    "orthograd-fixed-norm-adam-float32": dict(orthograd=True, fixed_norm=True, optimizer="adam",
                                              lr=1e-2, dtype="float32"),
    "ce-mean-gd-float32": dict(loss="cross_entropy", dtype="float32"),
    "ce-mean-float64-loss-sgd-nesterov-float32": dict(loss="cross_entropy", loss_dtype="float64",
                                                      optimizer="sgd", momentum=0.8,
                                                      nesterov=True, lr=0.3, dtype="float32"),
    "ce-sum-gd-ema-float64": dict(loss="cross_entropy", loss_reduction="sum", lr=0.05,
                                  grad_filter="ema", filter_alpha=0.9, filter_lamb=2.0,
                                  dtype="float64"),
    "ce-sum-float64-loss-gd-float32": dict(loss="cross_entropy", loss_reduction="sum",
                                           loss_dtype="float64", lr=0.05, dtype="float32"),
    "stablemax-mean-gd-float32": dict(loss="stablemax", dtype="float32"),
    "stablemax-mean-float64-loss-sgd-nesterov-float32": dict(
        loss="stablemax", loss_dtype="float64", optimizer="sgd", momentum=0.8, nesterov=True,
        lr=0.3, dtype="float32"),
    "stablemax-sum-gd-ma-float64": dict(loss="stablemax", loss_reduction="sum", lr=0.05,
                                        grad_filter="ma", filter_window=4, filter_lamb=3.0,
                                        dtype="float64"),
    "stablemax-sum-float64-loss-gd-float32": dict(loss="stablemax", loss_reduction="sum",
                                                  loss_dtype="float64", lr=0.05,
                                                  dtype="float32"),
    "ce-adamw-orthograd-float32": dict(loss="cross_entropy", optimizer="adamw", lr=1e-2,
                                       weight_decay=1.0, orthograd=True, dtype="float32"),
    "stablemax-float64-loss-adam-fixed-norm-ma": dict(loss="stablemax", loss_dtype="float64",
                                                      optimizer="adam", lr=1e-2, fixed_norm=True,
                                                      grad_filter="ma", filter_window=4,
                                                      dtype="float32"),
}

PER_STEP = {
    "host-numerics": dict(numerics="host"),
}


def launch(c: Config) -> list:
    """Three models with different seeds, learning rates, weight decays (and momenta, filter
    strengths)."""
    last = dict(momentum=c.momentum * 0.5) if c.momentum else {}
    return [c.replace(seed=10, lr=c.lr, weight_decay=c.weight_decay),
            c.replace(seed=11, lr=c.lr * 0.7, weight_decay=c.weight_decay * 3 + 1e-3,
                      filter_alpha=c.filter_alpha * 0.9, filter_lamb=c.filter_lamb * 0.5),
            c.replace(seed=12, lr=c.lr * 1.3, weight_decay=0.0, **last)]


def run(configs, native: bool, active=None, steps: int = 37):
    """History (name → [M, rows]), the stepper and its state after `steps` updates in CHUNKS."""
    st = TorchStepper(configs, make_dataset(configs[0]), CPU, native=native)
    assert (st.native is not None) == native
    mask = np.ones(len(configs), bool) if active is None else active
    pieces, s = [], 0
    for n in list(CHUNKS) + [steps - sum(CHUNKS)]:
        pieces.append(st.advance(s, n, mask))
        s += n
    hist = {k: np.concatenate([p[k] for p in pieces], axis=1) for k in STAT_NAMES}
    return hist, st, st.state_dict()


@pytest.mark.parametrize("variant", list(COVERED), ids=list(COVERED))
def test_native_loop_is_bitwise_the_per_step_path(variant):
    configs = launch(BASE.replace(**COVERED[variant]))
    h_step, st_step, s_step = run(configs, native=False)
    h_nat, st_nat, s_nat = run(configs, native=True)
    assert np.isfinite(h_nat["test_acc"]).any() and np.isfinite(h_nat["train_loss"]).all()
    assert_bitwise(h_nat, h_step, "history")
    assert_bitwise(s_nat, s_step, "state")
    # a model alone in the native loop is the same model in the launch
    h1, _, s1 = run(configs[1:2], native=True)
    assert_bitwise({k: v[1:2] for k, v in h_nat.items()}, h1, "model 1 alone")
    assert torch.equal(s_nat["theta"][1:2], s1["theta"])


def test_logged_and_eval_steps_run_in_the_native_call(monkeypatch):
    """Every step of a chunk, logged and evaluated ones included, runs in the native call: the
    per-step path is never entered, and the rows are still bitwise the per-step path's."""
    configs = launch(BASE.replace(dtype="float32", optimizer="sgd", momentum=0.9, lr=0.3))
    h_step, _, s_step = run(configs, native=False)

    def no_step(*args, **kw):
        raise AssertionError("a step ran on the per-step path")

    monkeypatch.setattr(TorchStepper, "_step", no_step)
    h_nat, _, s_nat = run(configs, native=True)
    assert np.isfinite(h_nat["test_loss"]).sum() == 3 * 4       # steps 0, 10, 20, 30
    assert_bitwise(h_nat, h_step, "history")
    assert_bitwise(s_nat, s_step, "state")


def test_chunks_cut_into_timed_native_calls_are_bitwise_one_call(monkeypatch):
    """A chunk runs in native calls of about PIECE_SECONDS each: with a tiny one every step is
    its own call (logged, eval and MA ring steps included), and nothing changes."""
    import grokfast.backends.torch.native as native

    configs = launch(BASE.replace(grad_filter="ma", filter_window=3))
    h_one, _, s_one = run(configs, native=True)
    monkeypatch.setattr(native, "PIECE_SECONDS", 1e-12)
    calls = []
    real = native.NativeLoop._call
    monkeypatch.setattr(native.NativeLoop, "_call",
                        lambda self, st, s0, n, *a: calls.append(n) or real(self, st, s0, n, *a))
    h_cut, _, s_cut = run(configs, native=True)
    assert calls == [1] * 37
    assert_bitwise(h_cut, h_one, "history")
    assert_bitwise(s_cut, s_one, "state")


def test_ctrl_c_breaks_into_a_long_native_chunk_and_keeps_the_steps_done():
    """KeyboardInterrupt reaches Python between native calls (a second Ctrl-C in the engine):
    a chunk of about a minute of work stops long before its end (calls of ~0.25 s), the
    counters and θ those of the steps done (a fresh stepper advanced by that many steps has the
    same bits)."""
    import _thread
    import threading
    import time

    configs = launch(BASE.replace(grad_filter="ema", log_every=1000, eval_every=1000))
    data, ones = make_dataset(configs[0]), np.ones(3, bool)
    st = TorchStepper(configs, data, CPU)
    st.advance(0, 5, ones)                                 # compiled
    timer = threading.Timer(0.3, _thread.interrupt_main)
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        st.advance(5, 1_000_000, ones)                     # ~1 min of work in one chunk
    assert time.perf_counter() - t0 < 10                   # loose: a loaded machine is slower
    done = int(st.steps_taken[0])
    assert 5 < done < 1_000_005 and (st.steps_taken == done).all()
    again = TorchStepper(configs, data, CPU)
    again.advance(0, done, ones)
    assert_bitwise(st.state_dict(), again.state_dict(), "state after the interrupt")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_diverging_runs_record_the_same_non_finite_statistics(dtype):
    """inf and NaN logits (x² with lr far too large): argmax, margins, norms and cosines treat them as the
    per-step path's torch ops do."""
    configs = launch(BASE.replace(dtype=dtype, loss_reduction="sum", activation="quadratic",
                                lr=0.2))
    h_step, _, s_step = run(configs, native=False)
    h_nat, _, s_nat = run(configs, native=True)
    assert not np.isfinite(h_step["train_loss"][:, -1]).any()
    assert np.isnan(h_step["min_margin"]).any()
    assert np.isnan(h_step["norm"]).any()
    assert_bitwise(h_nat, h_step, "history")
    assert_bitwise(s_nat, s_step, "state")


@pytest.mark.parametrize("changes", [{}, dict(grad_filter="ma", filter_window=3),
                                     dict(grad_filter="ema"),
                                     dict(optimizer="adam", lr=1e-2, weight_decay=0.01,
                                          orthograd=True, fixed_norm=True)],
                         ids=["gd", "ma", "ema", "adam-orthograd-fixed-norm"])
def test_stopped_models_are_not_stepped_by_the_native_loop(changes):
    configs = launch(BASE.replace(**changes))
    active = np.array([True, False, True])
    h_step, _, s_step = run(configs, native=False, active=active)
    h_nat, st, s_nat = run(configs, native=True, active=active)
    assert_bitwise(h_nat, h_step, "history")
    assert_bitwise(s_nat, s_step, "state")
    fresh = TorchStepper(configs, make_dataset(configs[0]), CPU)
    assert torch.equal(s_nat["theta"][1], fresh.state_dict()["theta"][1])
    assert np.isnan(h_nat["train_loss"][1]).all()


@pytest.mark.parametrize("changes", [dict(warmup_steps=9), dict(optimizer="sgd", momentum=0.9,
                                                                 nesterov=True, lr=0.3),
                                     dict(grad_filter="ma", filter_window=4),
                                     dict(grad_filter="ema"),
                                     dict(optimizer="adamw", lr=1e-2, warmup_steps=9,
                                          orthograd=True, fixed_norm=True)],
                         ids=["gd-warmup", "sgd-nesterov", "ma", "ema",
                              "adamw-warmup-orthograd-fixed-norm"])
def test_native_resume_from_a_state_dict_continues_bitwise(changes):
    configs = launch(BASE.replace(**changes))
    data, ones = make_dataset(configs[0]), np.ones(3, bool)
    straight = TorchStepper(configs, data, CPU)
    h = straight.advance(0, 33, ones)
    first = TorchStepper(configs, data, CPU)
    first.advance(0, 13, ones)
    resumed = TorchStepper(configs, data, CPU)
    resumed.load_state_dict(first.state_dict())
    h2 = resumed.advance(13, 20, ones)
    assert_bitwise({k: v[:, 3:] for k, v in h.items()}, h2, "history after resume")
    assert_bitwise(resumed.state_dict(), straight.state_dict(), "state after resume")


@pytest.mark.parametrize("variant", list(PER_STEP), ids=list(PER_STEP))
def test_configs_the_native_loop_does_not_cover_stay_on_the_per_step_path(variant):
    c = BASE.replace(**PER_STEP[variant])
    st = TorchStepper([c], make_dataset(c), CPU)
    assert st.native is None and why_not(st)


@pytest.mark.parametrize("changes", [{}, dict(optimizer="adamw", lr=1e-2, fixed_norm=True)],
                         ids=["gd", "adamw-fixed-norm"])
def test_shards_of_many_models_each_run_the_native_loop(changes):
    lr = changes.get("lr", BASE.lr)
    configs = [BASE.replace(**{**changes, "seed": s, "lr": lr * (1.0 + 0.01 * s)})
               for s in range(16)]
    data = make_dataset(configs[0])
    sharded = make_stepper(configs, data, CPU, shards=2)
    assert isinstance(sharded, ShardedStepper)
    assert all(sh.native is not None for sh in sharded.shards)
    ones = np.ones(16, bool)
    h = sharded.advance(0, 23, ones)
    per_step = TorchStepper(configs, data, CPU, native=False)
    assert_bitwise(h, per_step.advance(0, 23, ones), "history")
    assert torch.equal(sharded.state_dict()["theta"], per_step.state_dict()["theta"])


def test_engine_run_is_the_same_with_and_without_the_native_loop(monkeypatch):
    import grokfast.backends.torch.stepper as stepper

    configs = launch(BASE.replace(steps=45))
    native = grokfast.engine.run(configs, backend="torch", chunk_steps=15)
    monkeypatch.setattr(stepper, "native_loop", lambda st: None)
    per_step = grokfast.engine.run(configs, backend="torch", chunk_steps=15)
    for a, b in zip(native, per_step):
        assert_bitwise({k: np.asarray(v) for k, v in a.history.items()},
                       {k: np.asarray(v) for k, v in b.history.items()}, "history")
        assert_bitwise(a.params, b.params, "params")


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("wd", [0.0, 0.3], ids=["no-wd", "wd"])
def test_carried_w2t_is_the_transpose_of_the_updated_theta(dt, wd):
    """Plain GD carries W2ᵀ from step to step by the update itself (loop._gd_w2t): bitwise the
    transpose of θ's W2 after update._gd_step_kernel, special values included."""
    from grokfast.kernels.cpu import loop, update
    rng = np.random.default_rng(7)
    P1, w, p = 12, 6, 5
    theta = rng.standard_normal((1, P1 + w * p)).astype(dt)
    grad = rng.standard_normal((1, P1 + w * p)).astype(dt)
    theta[0, P1:P1 + 4] = [np.inf, -0.0, np.nan, 1e30]
    grad[0, P1 + 4:P1 + 7] = [-np.inf, 0.0, 3e-39]
    w2t = theta[0, P1:].reshape(w, p).T.copy()
    g2t = grad[0, P1:].reshape(w, p).T.copy()
    neg_lr, decay = np.full(1, -0.7, dt), np.full(1, wd, dt)
    update._gd_step_kernel(theta, grad, neg_lr, decay, P1 + w * p)
    loop._gd_w2t(w2t, g2t, neg_lr, decay)
    assert_bitwise(w2t, theta[0, P1:].reshape(w, p).T.copy())
