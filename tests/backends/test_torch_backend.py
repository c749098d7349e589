"""The torch backend against the reference: every Config variant, statistics, parameters, optimizer
and filter state; determinism, batched = separate, state round trip, a whole grokking run."""
import numpy as np
import pytest
import torch
from tolerances import assert_close
from variants import ORDERED
from variants import STEPPER_BASE as BASE
from variants import STEPPER_VARIANTS as VARIANTS

import grokfast
from grokfast import Config, GrokfastError, make_dataset
from grokfast.backends.reference import ReferenceStepper
from grokfast.backends.registry import stepper_class
from grokfast.backends.torch import ShardedStepper, TorchStepper, make_stepper
from grokfast.backends.torch.paths import shard_count
from grokfast.model import STAT_NAMES

CPU = torch.device("cpu")
# the code paths chosen by size at real shapes, forced at tiny ones
PATHS = {"mkl-dense-gather": dict(kernel="mkl", dw1="dense", first_layer="gather"),
         "mkl-index_add-embedding_bag": dict(kernel="mkl", dw1="index_add",
                                             first_layer="embedding_bag"),
         "numba": dict(kernel="numba")}


def config(**changes) -> Config:
    return Config(**{**BASE, **changes})


def advance_in_two(stepper, steps: int, split: int = 17) -> dict:
    """`steps` updates from step 0 in two chunks (crossing a chunk boundary); name → [M, rows]."""
    act = np.ones(stepper.n_models, bool)
    a, b = stepper.advance(0, split, act), stepper.advance(split, steps - split, act)
    return {k: np.concatenate([a[k], b[k]], axis=1) for k in STAT_NAMES}


def run_both(c: Config, steps: int, split: int = 17, paths=("auto",)):
    """The reference and one torch stepper per path (PATHS key or "auto"), `steps` updates each."""
    data = make_dataset(c)
    ref = ReferenceStepper([c], data, CPU)
    h_ref = advance_in_two(ref, steps, split)
    torch_runs = {}
    for path in paths:
        kw = PATHS.get(path, {})
        host = kw.get("kernel") == "mkl"  # MKL's GEMMs are the host-tuned numerics
        tb = TorchStepper([c.replace(numerics="host") if host else c], data, CPU, **kw)
        torch_runs[path] = (tb, advance_in_two(tb, steps, split))
    return ref, h_ref, torch_runs


def assert_histories_close(actual: dict, expected: dict, dtype) -> None:
    for name in STAT_NAMES:
        assert_close(actual[name], expected[name], name, dtype=dtype)


def assert_state_matches(ref: ReferenceStepper, tb: TorchStepper, c: Config, dtype) -> None:
    """Optimizer and filter state of model 0 against the reference's torch.optim / filter state."""
    run, state = ref.runs[0], tb.state_dict()
    layers = (("W1", run.model.W1), ("W2", run.model.W2))
    opt_state = run.optimizer.state
    if c.optimizer in ("adam", "adamw"):
        for key in ("exp_avg", "exp_avg_sq"):
            mine = tb.split(state[key])
            for k, (name, param) in enumerate(layers):
                assert_close(mine[k][0], opt_state[param][key], f"{key} {name}", dtype=dtype)
        assert all(float(opt_state[param]["step"]) == state["steps_taken"][0]
                   for _, param in layers)
    if c.optimizer == "sgd" and c.momentum:
        mine = tb.split(state["momentum_buffer"])
        for k, (name, param) in enumerate(layers):
            assert_close(mine[k][0], opt_state[param]["momentum_buffer"], f"buffer {name}",
                         dtype=dtype)
    if c.grad_filter == "ema":
        mine = tb.split(state["ema"])
        for k, (name, _) in enumerate(layers):
            assert_close(mine[k][0], run.filter_state[name], f"ema {name}", dtype=dtype)
    if c.grad_filter == "ma":
        W = c.filter_window
        window = [tb.split(state["ma_window"][:, j]) for j in range(W)]  # oldest first
        for k, (name, _) in enumerate(layers):
            deque = list(run.filter_state[name])
            assert len(deque) == min(state["filter_count"][0], W)
            for j, g in enumerate(deque):
                assert_close(window[W - len(deque) + j][k][0], g, f"window {name}[{j}]",
                             dtype=dtype)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_agrees_with_reference_float64(variant):
    c = config(**VARIANTS[variant])
    ref, h_ref, torch_runs = run_both(c, 50, paths=list(PATHS))
    assert np.isfinite(h_ref["train_loss"]).all(), "the variant's settings diverge: fix the test"
    W1_ref, W2_ref = ref.params()
    for path, (tb, h_tb) in torch_runs.items():
        print(f"path {path}")
        assert_histories_close(h_tb, h_ref, torch.float64)
        W1, W2 = tb.params()
        assert W1.dtype == torch.float64 and W1.shape == W1_ref.shape
        assert_close(W1, W1_ref, f"W1 ({path})")
        assert_close(W2, W2_ref, f"W2 ({path})")
        assert_state_matches(ref, tb, c, torch.float64)


FLOAT32 = {
    "mse-relu-gd": dict(),
    "ce-float64-loss-adamw": dict(loss="cross_entropy", loss_dtype="float64", optimizer="adamw",
                                  lr=1e-2),
    "stablemax-float64-loss": dict(loss="stablemax", loss_dtype="float64", lr=0.5),
    "concat-quadratic-ema-sgd": dict(encoding="concat", activation="quadratic", grad_filter="ema",
                                     optimizer="sgd", lr=0.05, momentum=0.9, **ORDERED),
}


@pytest.mark.parametrize("variant", list(FLOAT32), ids=list(FLOAT32))
def test_agrees_with_reference_float32(variant):
    c = config(dtype="float32", **FLOAT32[variant])
    ref, h_ref, torch_runs = run_both(c, 50)
    tb, h_tb = torch_runs["auto"]
    assert_histories_close(h_tb, h_ref, torch.float32)
    W1, W2 = tb.params()
    assert W1.dtype == torch.float32
    assert_close(W1, ref.params()[0], "W1")
    assert_close(W2, ref.params()[1], "W2")
    assert_state_matches(ref, tb, c, torch.float32)


def test_log_and_eval_intervals_leave_nan_rows_where_the_reference_does():
    c = config(log_every=2, eval_every=6)
    _, h_ref, torch_runs = run_both(c, 31, split=9)
    h_tb = torch_runs["auto"][1]
    np.testing.assert_array_equal(h_tb["step"], h_ref["step"])
    np.testing.assert_array_equal(np.isnan(h_tb["test_acc"]), np.isnan(h_ref["test_acc"]))
    assert_histories_close(h_tb, h_ref, torch.float64)


def run_torch(configs, steps, chunks=(20,), **kw):
    """History (name → [M, rows]) and parameters of a torch-stepper run, advanced in chunks."""
    data = make_dataset(configs[0])
    st = TorchStepper(configs, data, CPU, **kw)
    pieces, s = [], 0
    for n in list(chunks) + [steps - sum(chunks)]:
        pieces.append(st.advance(s, n, np.ones(len(configs), bool)))
        s += n
    hist = {k: np.concatenate([p[k] for p in pieces], axis=1) for k in STAT_NAMES}
    return hist, st.params(), st


def assert_bitwise(h_a, p_a, h_b, p_b, what):
    for k in STAT_NAMES:
        np.testing.assert_array_equal(h_a[k], h_b[k], err_msg=f"{what}: {k}")
    for a, b, name in zip(p_a, p_b, ("W1", "W2")):
        assert torch.equal(a, b), f"{what}: {name} differs"


BITWISE = {
    "mse-relu-gd": (dict(), {}),
    "adamw-ema-orthograd-fixed-norm": (dict(optimizer="adamw", lr=1e-2, grad_filter="ema",
                                            orthograd=True, fixed_norm=True), {}),
    "ce-nesterov-ma": (dict(loss="cross_entropy", optimizer="sgd", momentum=0.8, nesterov=True,
                            lr=0.3, grad_filter="ma", filter_window=3), {}),
    "concat-quadratic-adam-index_add": (dict(encoding="concat", activation="quadratic",
                                             optimizer="adam", lr=1e-2, numerics="host",
                                             **ORDERED),
                                        PATHS["mkl-index_add-embedding_bag"]),
    "stablemax-float32-two-threads": (dict(loss="stablemax", dtype="float32", lr=0.5),
                                      dict(threads=2)),
}


@pytest.mark.parametrize("variant", list(BITWISE), ids=list(BITWISE))
def test_deterministic_and_batched_equals_separate(variant):
    changes, kw = BITWISE[variant]
    c = config(**changes)
    # different seeds and different per-model scalars in one launch
    scalars = [dict(lr=c.lr, weight_decay=c.weight_decay),
               dict(lr=c.lr * 0.7, weight_decay=c.weight_decay * 3 + 1e-3),
               dict(lr=c.lr * 1.3, weight_decay=0.0)]
    if c.grad_filter == "ema":
        scalars[1].update(filter_alpha=0.8, filter_lamb=1.0)
    if c.optimizer == "sgd":
        scalars[2].update(momentum=0.5)
    if c.optimizer in ("adam", "adamw"):
        scalars[1].update(betas=(0.8, 0.95), eps=1e-6)
    configs = [c.replace(seed=10 + i, **s) for i, s in enumerate(scalars)]
    steps = 30
    h, p, _ = run_torch(configs, steps, **kw)
    h2, p2, _ = run_torch(configs, steps, chunks=(7, 11), **kw)
    assert_bitwise(h, p, h2, p2, "second run")
    for i, ci in enumerate(configs):
        hi, pi, _ = run_torch([ci], steps, **kw)
        assert_bitwise({k: v[i:i + 1] for k, v in h.items()}, (p[0][i:i + 1], p[1][i:i + 1]),
                       hi, pi, f"model {i} alone")


def test_batched_equals_separate_at_a_threaded_size():
    """Big enough that ATen splits elementwise ops and reductions across two threads."""
    # N = 1104 rows: a two-thread GEMM splits its K = N sum (so one mm per model); W1 has 36096
    # elements, over ATen's 32768 grain (so its reductions split)
    c = Config(p=47, pairs="ordered", encoding="concat", n_test=None, train_frac=0.5, width=384,
               optimizer="sgd", lr=0.5, momentum=0.9, orthograd=True, fixed_norm=True, log_every=1,
               eval_every=2, seed=0)
    configs = [c.replace(seed=s, lr=lr) for s, lr in ((0, 0.5), (1, 0.2))]
    h, p, _ = run_torch(configs, 4, chunks=(2,), threads=2)
    h1, p1, _ = run_torch(configs[1:], 4, chunks=(2,), threads=2)
    assert_bitwise({k: v[1:] for k, v in h.items()}, (p[0][1:], p[1][1:]), h1, p1, "model 1 alone")


def test_inactive_models_are_not_stepped():
    configs = [config(seed=s, optimizer="adam", lr=1e-2, grad_filter="ma", filter_window=4)
               for s in (0, 1, 2)]
    data = make_dataset(configs[0])
    st = TorchStepper(configs, data, CPU)
    st.advance(0, 5, np.ones(3, bool))
    before = st.state_dict()
    rows = st.advance(5, 6, np.array([True, False, True]))
    assert np.isnan(rows["train_loss"][1]).all() and np.isfinite(rows["train_loss"][[0, 2]]).all()
    after = st.state_dict()
    assert torch.equal(after["theta"][1], before["theta"][1])
    assert torch.equal(after["exp_avg"][1], before["exp_avg"][1])
    assert after["steps_taken"][1] == 5 and after["steps_taken"][0] == 11
    # the frozen model's window keeps its order: stepping it now matches an uninterrupted run
    st.advance(11, 4, np.array([False, True, False]))
    alone = TorchStepper(configs[1:2], data, CPU)
    alone.advance(0, 9, np.ones(1, bool))
    assert torch.equal(st.params()[0][1], alone.params()[0][0])
    assert torch.equal(st.params()[1][1], alone.params()[1][0])


@pytest.mark.parametrize("variant", ["sgd-nesterov", "ema-normalize-lr-adamw", "ma-mean-warmup",
                                     "warmup-adamw"])
def test_state_dict_round_trip_continues_bitwise(variant):
    configs = [config(seed=s, **VARIANTS[variant]) for s in (0, 1)]
    data = make_dataset(configs[0])
    straight = TorchStepper(configs, data, CPU)
    h40 = straight.advance(0, 40, np.ones(2, bool))
    first = TorchStepper(configs, data, CPU)
    first.advance(0, 20, np.ones(2, bool))
    state = first.state_dict()
    resumed = TorchStepper(configs, data, CPU)
    resumed.load_state_dict(state)
    h20 = resumed.advance(20, 20, np.ones(2, bool))
    for k in STAT_NAMES:
        np.testing.assert_array_equal(h20[k], h40[k][:, 20:], err_msg=k)
    assert all(torch.equal(a, b) for a, b in zip(resumed.params(), straight.params()))


@pytest.mark.parametrize("kernel", ["mkl", "numba"])
def test_whole_run_groks_at_the_reference_steps(kernel, monkeypatch):
    """Memorizes at step 40 and groks at step 360 (seed 0) on both backends.

    The MKL path runs the reference's own GEMMs, so its whole history stays within float32's
    tolerance. The numba path sums in another order: AdamW at wd = 1 amplifies the last-bit
    differences (cos_grad_W1 7e-5 relative by step 80, the training loss 6e-2 by step 400,
    measured; 4e-2 in float64 too), so there its history is held to the tolerance over the first
    50 steps, as in the per-step agreement tests, and the milestones over the whole run."""
    import grokfast.backends.torch.paths as paths
    monkeypatch.setattr(paths, "NUMBA_MAX_WORK", 0 if kernel == "mkl" else paths.NUMBA_MAX_WORK)
    c = Config(p=23, pairs="ordered", encoding="concat", n_test=None, train_frac=0.5, width=64,
               activation="quadratic", init="normal", optimizer="adamw", lr=1e-2, weight_decay=1.0,
               betas=(0.9, 0.98), steps=400, log_every=10, eval_every=10,
               numerics="host" if kernel == "mkl" else "portable")
    fast = grokfast.train(c, backend="torch")
    ref = grokfast.train(c, backend="reference")
    assert fast.backend == "torch" and ref.backend == "reference"
    assert fast.memorization_step == ref.memorization_step is not None
    assert fast.grok_step == ref.grok_step is not None
    rows = len(ref.history["step"]) if kernel == "mkl" else 50 // c.log_every
    assert_histories_close({k: np.asarray(v)[:rows] for k, v in fast.history.items()},
                           {k: np.asarray(v)[:rows] for k, v in ref.history.items()},
                           torch.float32)


def test_auto_backend_on_cpu_is_torch():
    assert stepper_class("auto", "cpu") is TorchStepper
    r = grokfast.train(config(steps=5), backend="auto")
    assert r.backend == "torch" and r.steps_done == 5


def test_bad_input_raises_at_the_boundary():
    c = config()
    data = make_dataset(c)
    with pytest.raises(GrokfastError, match="precision"):
        TorchStepper([c.replace(precision="tf32")], data, CPU)
    with pytest.raises(GrokfastError, match="make_dataset"):
        TorchStepper([config(p=5)], data, CPU)
    with pytest.raises(GrokfastError, match="dw1"):
        TorchStepper([c], data, CPU, dw1="scatter")
    with pytest.raises(GrokfastError, match="share 'width'"):
        TorchStepper([c, c.replace(width=8)], data, CPU)
    st = TorchStepper([c], data, CPU)
    other = TorchStepper([c, c.replace(seed=4)], data, CPU)
    with pytest.raises(GrokfastError, match="same"):
        st.load_state_dict(other.state_dict())


def test_threads_over_models_give_the_same_bits_and_state():
    """ShardedStepper (a pool of threads over shards of models) equals one stepper over all the
    models, also with more shards than threads, with a whole shard inactive for a chunk (its MA
    ring does not rotate) and across a state-dict round trip between the two layouts."""
    configs = [config(seed=s, lr=1e-2 * (1 + s / 10), optimizer="adam", grad_filter="ma",
                      filter_window=4) for s in range(16)]
    data = make_dataset(configs[0])
    sharded = make_stepper(configs, data, CPU, shards=2)
    plain = make_stepper(configs, data, CPU, shards=1)
    assert isinstance(sharded, ShardedStepper) and isinstance(plain, TorchStepper)
    first_off = np.ones(16, bool)
    first_off[:8] = False                                       # shard 0 frozen for a chunk
    five = make_stepper(configs, data, CPU, shards=5)           # uneven, more than the threads
    assert len(five.shards) == 5 and five.pool._max_workers == min(5, torch.get_num_threads())
    hist = []
    for st in (sharded, plain, five):
        rows = [st.advance(0, 5, np.ones(16, bool)), st.advance(5, 3, first_off),
                st.advance(8, 4, np.ones(16, bool))]
        hist.append({k: np.concatenate([r[k] for r in rows], axis=1) for k in STAT_NAMES})
    assert_bitwise(hist[0], sharded.params(), hist[1], plain.params(), "sharded vs plain")
    assert_bitwise(hist[2], five.params(), hist[1], plain.params(), "5 shards vs plain")
    # the sharded state continues bitwise in an unsharded stepper, and vice versa
    a, b = make_stepper(configs, data, CPU, shards=1), make_stepper(configs, data, CPU, shards=2)
    a.load_state_dict(sharded.state_dict())
    b.load_state_dict(plain.state_dict())
    out = [st.advance(12, 6, np.ones(16, bool)) for st in (a, b, plain)]
    for h in out[:2]:
        assert_bitwise(h, a.params() if h is out[0] else b.params(), out[2], plain.params(),
                       "after the state round trip")
    with pytest.raises(GrokfastError, match="shards"):
        make_stepper(configs, data, CPU, shards=17)


def test_a_launch_of_small_models_is_cut_into_shards_of_at_most_64():
    c = Config.preset("paper-real")
    for M, threads, want in [(1, 2, 1), (2, 2, 2), (5, 2, 2), (5, 1, 1), (16, 2, 2), (64, 2, 2),
                             (65, 1, 2), (256, 2, 4), (256, 1, 4), (300, 2, 5)]:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert shard_count([c] * M, "cpu", None, None) == want, (M, threads)
        finally:
            torch.set_num_threads(old)
    # numerics host (the per-step path, whose Python per step a shard shares): 8 models a shard
    small_host = c.replace(numerics="host")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert [shard_count([small_host] * M, "cpu", None, None) for M in (2, 15, 16)] == [1, 1, 2]
    finally:
        torch.set_num_threads(old)
    gromov = Config.preset("gromov")
    host = gromov.replace(numerics="host")
    assert shard_count([host] * 256, "cpu", None, None) == 1  # large activations: intra-op MKL
    # portable numerics: the numba kernels step each large model on one thread, threads over models
    assert shard_count([gromov] * 256, "cpu", None, None) == torch.get_num_threads()
    assert shard_count([gromov], "cpu", None, None) == 1


def test_many_models_agree_with_the_reference():
    """64 paper-real-shaped models in one launch (numba kernels, threads over models): every
    model's statistics and parameters within float32's tolerance of its own reference run."""
    c = Config.preset("paper-real").replace(steps=30, log_every=5, eval_every=10)
    configs = [c.replace(seed=s, lr=0.5 + s / 64) for s in range(64)]
    batch = grokfast.engine.run(configs, backend="torch")
    for i in (0, 21, 42, 63):
        ref = grokfast.train(configs[i], backend="reference")
        assert_histories_close(batch[i].history, ref.history, torch.float32)
        for layer in ("W1", "W2"):
            assert_close(batch[i].params[layer], ref.params[layer], f"model {i} {layer}")


def test_paths_are_a_pure_function_of_sizes():
    """choose_paths: paper-real takes the numba kernel and the dense dW1, gromov MKL and
    index_add_; nothing but the (exact) first layer depends on the number of models."""
    from grokfast.backends.torch.paths import Paths, choose_paths
    paper = dict(N=59, d_in=22, width=128, p=11, device_type="cpu", num_threads=2)
    gromov = dict(N=2823, d_in=194, width=512, p=97, device_type="cpu", num_threads=2)
    assert choose_paths(1, **paper) == Paths("dense", "gather", "numba", 1)
    assert choose_paths(64, **paper) == Paths("dense", "embedding_bag", "numba", 1)
    assert choose_paths(1, **gromov) == Paths("index_add", "embedding_bag", "mkl", 2)
    assert choose_paths(1, **gromov, portable=True).kernel == "numba"  # every size
    with pytest.raises(GrokfastError, match="numerics='host'"):
        choose_paths(1, **gromov, portable=True, kernel="mkl")
    assert choose_paths(1, **paper, numba_available=False).kernel == "mkl"
    assert choose_paths(1, **{**paper, "device_type": "cuda"}, kernel="mkl").dw1 == "dense"
    with pytest.raises(GrokfastError, match="numba"):
        choose_paths(1, **paper, kernel="numba", numba_available=False)
    with pytest.raises(GrokfastError, match="threads"):
        choose_paths(1, **paper, threads=0)
