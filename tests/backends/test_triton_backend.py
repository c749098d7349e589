"""The Triton backend against the reference, whole runs: through Triton's interpreter on a CPU
machine, on the GPU where CUDA is available (bench/gpu_check.sh); the reference always on the CPU.

Every variant of the Config runs ≥ 20 steps on both backends from the same seed, in both regimes
(fused: one program per model runs whole steps; tiled: blocks of samples and tiles of parameters);
the loss, every statistic at every step, the final parameters and the optimizer / filter state must
agree within tests/tolerances.py (float64: 1e-12, float32 with IEEE products: 1e-5). Then
determinism, resume, batched == alone (bitwise), inactive models and the boundary errors; on a GPU
also TF32 within its documented tolerance and CUDA-graph replay == eager launches. Shapes are tiny:
the interpreter costs ~0.1 ms per operation per program.
"""
import numpy as np
import pytest
import torch
from tolerances import TF32_TOL, assert_close
from variants import KERNEL_VARIANTS as VARIANTS
from variants import STEPS, TINY

import grokfast
from grokfast import Config, GrokfastError, make_dataset
from grokfast.backends.reference import ReferenceStepper
from grokfast.backends.triton.stepper import TritonStepper, check_supported
from grokfast.model import STAT_NAMES, torch_dtype

CPU = torch.device("cpu")
DEVICE = torch.device("cuda") if torch.cuda.is_available() else CPU   # where the kernels run
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="GPU-only check (no CUDA here); bench/gpu_check.sh runs it")
# Small blocks so that every reduction crosses tiles: 2 row blocks of samples, 2 hidden slices
# in the rows kernel, 4 W1 tiles + 2 W2 tiles in the gradient kernel, 2 + 2 flat tiles after it.
SMALL_BLOCKS = dict(rows_block_n=16, rows_block_h=16, block_r=4, block_h=16, block_hh=16,
                    block_e=128)


def run_both(c: Config, regime: str, blocks=None):
    data = make_dataset(c)
    one = np.ones(1, dtype=bool)
    ref = ReferenceStepper([c], data, CPU)
    tri = TritonStepper([c], data, DEVICE, regime=regime, blocks=blocks)
    assert tri.regime == regime
    return ref, ref.advance(0, c.steps, one), tri, tri.advance(0, c.steps, one)


def layers(flat: torch.Tensor, c: Config):
    """A flat [D] parameter-shaped vector → (W1-shaped, W2-shaped)."""
    d1 = c.d_in * c.width
    return flat[:d1].reshape(c.d_in, c.width), flat[d1:].reshape(c.width, c.p)


def compare_runs(c: Config, ref, rows_ref, tri, rows_tri) -> None:
    dt = torch_dtype(c)
    for name in STAT_NAMES:
        assert_close(rows_tri[name], rows_ref[name], name, dtype=dt)
    assert np.isfinite(rows_tri["train_loss"]).all()
    (W1r, W2r), (W1t, W2t) = ref.params(), tri.params()
    assert W1t.dtype == dt and W2t.dtype == dt
    assert_close(W1t, W1r, "W1")
    assert_close(W2t, W2r, "W2")

    run, state = ref.runs[0], tri.state_dict()
    params = [run.model.W1, run.model.W2]
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if key in state:
            for k, (mine, p) in enumerate(zip(layers(state[key][0], c), params)):
                assert_close(mine, run.optimizer.state[p][key], f"{key}[W{k + 1}]")
    if c.grad_filter == "ema":
        for k, mine in enumerate(layers(state["ema"][0], c)):
            assert_close(mine, run.filter_state[f"W{k + 1}"], f"ema[W{k + 1}]")
    if c.grad_filter == "ma":
        w = c.filter_window
        for k in range(2):
            window = list(run.filter_state[f"W{k + 1}"])  # oldest first, as ma_window
            for age, g in enumerate(reversed(window)):
                assert_close(layers(state["ma_window"][0, w - 1 - age], c)[k], g,
                             f"ma_window[W{k + 1}][{age}]")


REGIMES = ["fused", "tiled"]


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_agrees_with_reference(name, regime):
    c = Config(**{**TINY, **VARIANTS[name]})
    compare_runs(c, *run_both(c, regime))


def test_fused_float64_products_without_tl_dot_agree_with_reference(monkeypatch):
    """The fused kernel's float64 run as a GPU compiles it: every product through common._dot_fma
    (fixed-order multiply-adds instead of a float64 tl.dot), forced in the interpreter."""
    from grokfast.kernels.triton import launch as klaunch
    monkeypatch.setattr(klaunch, "FMA_IN_INTERPRETER", True)
    assert klaunch.fused_precision("ieee", torch.float64) == "fma"
    assert klaunch.fused_precision("ieee", torch.float32) == "ieee"
    c = Config(**{**TINY, **VARIANTS["adam-ema-orthograd-ce"], "activation": "quadratic",
                  "steps": 6})  # the loop costs ~K interpreted ops per product: few steps
    compare_runs(c, *run_both(c, "fused"))


def test_agrees_with_reference_across_tiles():
    """Ragged sample blocks, hidden slices and parameter tiles: every cross-tile reduction."""
    c = Config(**{**TINY, "p": 7, "width": 24, "n_test": 6, "optimizer": "adam", "lr": 0.02,
                  "weight_decay": 0.01, "orthograd": True, "fixed_norm": True,
                  "grad_filter": "ema", "dtype": "float64"})
    ref, rows_ref, tri, rows_tri = run_both(c, "tiled", blocks=SMALL_BLOCKS)
    assert tri.plan.tg == 4 + 2 and tri.plan.te == 2 + 2 and tri.part_rows.shape[1] == 3
    compare_runs(c, ref, rows_ref, tri, rows_tri)


@pytest.mark.parametrize("changes", [
    dict(optimizer="adam", lr=0.02, weight_decay=0.01, orthograd=True, fixed_norm=True,
         grad_filter="ema", dtype="float64"),
    dict(optimizer="sgd", momentum=0.9, lr=0.1, grad_filter="ma", filter_window=3,
         loss="stablemax", loss_dtype="float64", dtype="float32", eval_every=3),
], ids=["float64-adam-ema-orthograd-fixednorm", "float32-sgd-ma-stablemax"])
def test_fused_agrees_with_reference_across_chunks(changes):
    """The fused kernel's chunks: 3 chunks of 16 training samples (the last ragged), 2 hidden
    slices of the forward product, flat update tiles of 64 (ragged) — every cross-chunk sum."""
    c = Config(**{**TINY, "p": 9, "width": 32, "n_test": 9, "steps": 8, **changes})
    ref, rows_ref, tri, rows_tri = run_both(
        c, "fused", blocks=dict(fused_block_n=16, fused_block_h=16, block_e=64))
    assert tri.n_train > 32 and tri.plan.D1 % 64 and (tri.plan.D - tri.plan.D1) % 64
    compare_runs(c, ref, rows_ref, tri, rows_tri)


def engine_config(device: torch.device = DEVICE) -> Config:
    """The engine-history test's config, on the device the kernels run on: backend="triton" refuses
    device="cpu" on a GPU machine (the interpreter accepts it, which is why a CPU run can't tell)."""
    return Config(**{**TINY, "log_every": 2, "eval_every": 6, "optimizer": "adamw", "lr": 0.01,
                     "weight_decay": 0.5, "device": device.type})


def test_engine_config_is_on_the_kernels_device():
    assert engine_config(torch.device("cuda")).device == "cuda"
    assert engine_config().device == DEVICE.type


def test_engine_history_matches_reference():
    """grokfast.train(backend="triton") is a drop-in: same Result fields, NaN between evaluations."""
    c = engine_config()
    r_ref = grokfast.reference.train(c.replace(device="cpu"))
    r_tri = grokfast.train(c, backend="triton")
    assert r_tri.backend == "triton"
    assert list(r_tri.history["step"]) == list(range(0, STEPS, 2))
    assert np.isnan(r_tri.history["test_acc"][1]) and not np.isnan(r_tri.history["test_acc"][3])
    for name in STAT_NAMES:
        assert_close(r_tri.history[name], r_ref.history[name], name)
    assert_close(r_tri.params["W1"], r_ref.params["W1"], "W1")
    assert_close(r_tri.params["W2"], r_ref.params["W2"], "W2")
    assert r_tri.final.keys() == r_ref.final.keys()


# ---------------------------------------------------------------- bitwise properties
STATEFUL = dict(TINY, optimizer="adamw", lr=0.02, weight_decay=0.1, grad_filter="ma",
                filter_window=3, filter_lamb=1.5, dtype="float32", log_every=2, eval_every=4)


def _bitwise(a: dict, b: dict, rows=slice(None)):
    for name in STAT_NAMES:
        np.testing.assert_array_equal(a[name][rows], b[name][rows], err_msg=name)


@pytest.mark.parametrize("regime", REGIMES)
def test_deterministic_resumable_and_batch_equals_alone(regime):
    """Two runs are bitwise equal; a run resumed from state_dict in a fresh stepper after 7 steps
    (not a multiple of log_every) is bitwise equal to the uninterrupted one; and in a batch of
    three models with different seeds and hyperparameters, each model is bitwise equal to the same
    model run alone."""
    c = Config(**STATEFUL)
    data = make_dataset(c)
    one = np.ones(1, dtype=bool)
    alone = TritonStepper([c], data, DEVICE, regime=regime)
    rows_alone = alone.advance(0, STEPS, one)

    first = TritonStepper([c], data, DEVICE, regime=regime)
    rows_a = first.advance(0, 7, one)
    resumed = TritonStepper([c], data, DEVICE, regime=regime)
    resumed.load_state_dict(first.state_dict())
    rows_b = resumed.advance(7, STEPS - 7, one)
    joined = {k: np.concatenate([rows_a[k], rows_b[k]], axis=1) for k in STAT_NAMES}
    _bitwise(joined, rows_alone)
    for mine, other in zip(resumed.params(), alone.params()):
        assert torch.equal(mine, other)

    others = [c.replace(seed=7, lr=0.005, weight_decay=1.0, filter_lamb=0.5, betas=(0.8, 0.9)),
              c.replace(seed=11, warmup_steps=5, eps=1e-6)]
    batch = TritonStepper([others[0], c, others[1]], data, DEVICE, regime=regime)
    rows_batch = batch.advance(0, STEPS, np.ones(3, dtype=bool))
    _bitwise({k: v[1:2] for k, v in rows_batch.items()}, rows_alone)
    W1b, W2b = batch.params()
    W1a, W2a = alone.params()
    assert torch.equal(W1b[1:2], W1a) and torch.equal(W2b[1:2], W2a)
    assert not torch.equal(W1b[0], W1b[1])  # the other models really are different runs


@pytest.mark.parametrize("regime", REGIMES)
def test_inactive_models_are_not_stepped(regime):
    c = Config(**{**TINY, "steps": 4})
    data = make_dataset(c)
    st = TritonStepper([c, c.replace(seed=5)], data, DEVICE, regime=regime)
    st.advance(0, 2, np.array([True, True]))
    W1_before, W2_before = st.params()
    rows = st.advance(2, 2, np.array([True, False]))
    assert np.isnan(rows["train_loss"][1]).all() and np.isfinite(rows["train_loss"][0]).all()
    W1, W2 = st.params()
    assert torch.equal(W1[1], W1_before[1]) and torch.equal(W2[1], W2_before[1])
    assert not torch.equal(W1[0], W1_before[0])
    rows = st.advance(4, 1, np.array([True, False]))  # the stopped model stays put on later calls
    assert torch.equal(st.params()[0][1], W1_before[1])


# ---------------------------------------------------------------- boundary errors
@pytest.mark.parametrize("changes, match", [
    (dict(precision="tf32", dtype="float32"), "needs a GPU"),
    (dict(precision="tf32x3", dtype="float64"), "float32 only"),
    (dict(p=521, width=8), "p ≤ 512"),
])
def test_unsupported_configs_name_the_fallback(changes, match, monkeypatch):
    from grokfast.kernels.triton import launch as klaunch
    monkeypatch.setattr(klaunch, "interpreting", lambda: True)  # the CPU path, on any machine
    c = Config(**{**TINY, **changes})
    with pytest.raises(GrokfastError, match=match) as e:
        check_supported(c, CPU)
    assert "backend='torch'" in str(e.value)


def test_cpu_without_interpreter_names_the_fallback(monkeypatch):
    from grokfast.kernels.triton import launch as klaunch
    monkeypatch.setattr(klaunch, "interpreting", lambda: False)
    with pytest.raises(GrokfastError, match="needs a CUDA GPU.*backend='torch'"):
        check_supported(Config(**TINY), CPU)


def test_bad_stepper_options_are_rejected():
    c = Config(**TINY)
    with pytest.raises(GrokfastError, match="unknown block sizes"):
        TritonStepper([c], make_dataset(c), DEVICE, blocks=dict(block_m=16))
    with pytest.raises(GrokfastError, match="power of two.*backend='torch'"):
        TritonStepper([c], make_dataset(c), DEVICE, regime="tiled", blocks=dict(block_hh=24))
    with pytest.raises(GrokfastError, match="regime='fast'"):
        TritonStepper([c], make_dataset(c), DEVICE, regime="fast")
    with pytest.raises(GrokfastError, match="must share 'activation'"):
        TritonStepper([c, c.replace(activation="quadratic")], make_dataset(c), DEVICE)
    big = Config(**{**TINY, "p": 23, "width": 64, "n_test": 6})  # 270 samples × 64 hidden
    with pytest.raises(GrokfastError, match="fits one program.*regime='tiled'"):
        TritonStepper([big], make_dataset(big), DEVICE, regime="fused")
    assert TritonStepper([big], make_dataset(big), DEVICE).regime == "tiled"


# ---------------------------------------------------------------- GPU only
# TF32_TOL lives in tests/tolerances.py beside the dtype table, with its justification.


@needs_cuda
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_tf32_within_documented_tolerance(precision, regime):
    c = Config(**{**TINY, **VARIANTS["f32-adamw-ce-float64-loss-ema"], "precision": precision})
    ref, rows_ref, tri, rows_tri = run_both(c.replace(precision="ieee"), regime)
    tf32 = TritonStepper([c], make_dataset(c), DEVICE, regime=regime)
    rows = tf32.advance(0, c.steps, np.ones(1, dtype=bool))
    for name in STAT_NAMES:
        if precision == "tf32x3":
            assert_close(rows[name], rows_ref[name], name, dtype=torch.float32)
        else:
            np.testing.assert_allclose(rows[name], rows_ref[name], err_msg=name, **TF32_TOL)
    assert not np.array_equal(rows["train_loss"], rows_tri["train_loss"]) or precision == "tf32x3"


@needs_cuda
def test_cuda_graph_replay_equals_eager():
    """The tiled regime captures an advance() into a CUDA graph from its second call on."""
    c = Config(**{**STATEFUL, "steps": 3 * STEPS})
    data = make_dataset(c)
    one = np.ones(1, dtype=bool)
    graphed = TritonStepper([c], data, DEVICE, regime="tiled")
    eager = TritonStepper([c], data, DEVICE, regime="tiled", cuda_graphs=False)
    for step0 in (0, STEPS, 2 * STEPS):
        _bitwise(graphed.advance(step0, STEPS, one), eager.advance(step0, STEPS, one))
    assert graphed._graphs and not eager._graphs
    for a, b in zip(graphed.params(), eager.params()):
        assert torch.equal(a, b)
