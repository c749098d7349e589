"""Portable numerics (grokfast.numerics, kernels/cpu/reduce.py, cpu_grad.forward_portable): each
sum in the order its docstring writes, bitwise; the config field end to end; the fingerprint; the
README's example output."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import grokfast
from grokfast import Config, GrokfastError, numerics
from grokfast.kernels.cpu import grad as cpu_grad
from grokfast.kernels.cpu import reduce as cpu_reduce
from fma_order import chain
from tolerances import assert_close

DTYPES = [np.float32, np.float64]


def lane_sum(row, dt):
    """The documented order: eight lanes c ≡ l (mod 8), the tail in order, a fixed tree."""
    s = [dt(0)] * 8
    G = len(row) - len(row) % 8
    for c in range(G):
        s[c % 8] = dt(s[c % 8] + row[c])
    t = dt(0)
    for c in range(G, len(row)):
        t = dt(t + row[c])
    return dt(dt(dt(dt(s[0] + s[1]) + dt(s[2] + s[3])) + dt(dt(s[4] + s[5]) + dt(s[6] + s[7]))) + t)


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("C", [0, 1, 7, 8, 9, 17, 130])
def test_row_sums_follow_the_written_order_bitwise(dt, C):
    rng = np.random.default_rng(C)
    x = (rng.standard_normal((3, C)) * 10.0 ** rng.integers(-6, 6, (3, C))).astype(dt)
    out = np.full(3, np.nan, dt)
    cpu_reduce.row_sums(x, out)
    want = np.array([lane_sum(r, dt) for r in x], dt)
    assert np.array_equal(out, want), (out, want)
    t = torch.from_numpy(x)
    assert torch.equal(numerics.row_sum(t), torch.from_numpy(want))
    assert torch.equal(numerics.row_sum(t.T.contiguous().T), torch.from_numpy(want))  # strided


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("quadratic", [False, True], ids=["relu", "x2"])
def test_forward_portable_sums_over_k_in_order(dt, quadratic):
    """Ŷ[n, j] = fma(H[n,w−1], W2[w−1,j], … fma(H[n,1], W2[1,j], fma(H[n,0], W2[0,j], 0))), k in
    order, bitwise, for a width with a ragged tail (19 = 4·4 + 3); H exact, and Z (written for
    σ = x² only); equal to the host forward to the tolerance."""
    rng = np.random.default_rng(1)
    M, N, w, p, d_in = 2, 5, 19, 3, 4
    P1 = d_in * w
    theta = rng.standard_normal((M, P1 + w * p)).astype(dt)
    i0, i1 = rng.integers(0, d_in, N), rng.integers(0, d_in, N)
    bufs = lambda: [np.full(s, np.nan, dt) for s in ((M, N, w), (M, N, w), (M, p, w))]  # noqa
    Z, H, w2t = bufs()
    out = np.full((M, N, p), np.nan, dt)
    cpu_grad.forward_portable(np.arange(M), theta, i0, i1, P1, quadratic, dt(0), Z, H, w2t, out)
    for m in range(M):
        W1, W2 = theta[m, :P1].reshape(d_in, w), theta[m, P1:].reshape(w, p)
        z = W1[i0] + W1[i1]
        h = z * z if quadratic else np.where(z > 0, z, dt(0))
        assert np.array_equal(H[m], h)
        assert np.array_equal(Z[m], z) if quadratic else np.isnan(Z[m]).all()  # ReLU: H only
        for n in range(N):
            for j in range(p):
                s = chain([(h[n, k], W2[k, j]) for k in range(w)], dt)
                assert out[m, n, j] == s, (m, n, j)
    Z2, H2, w2t2 = bufs()
    host = np.full((M, N, p), np.nan, dt)
    cpu_grad.forward(np.arange(M), theta, i0, i1, P1, quadratic, dt(0), Z2, H2, w2t2, host)
    assert_close(torch.from_numpy(out), torch.from_numpy(host), "logits",
                 dtype=torch.from_numpy(host).dtype)


def test_numerics_is_a_config_field_recorded_in_the_run(tmp_path):
    assert Config().numerics == "portable"
    with pytest.raises(GrokfastError, match="numerics"):
        Config(numerics="fast")
    c = Config.preset("paper-real").replace(steps=20).with_setting("numerics=host")
    res = grokfast.train(c, out=tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["numerics"] == "host"
    assert res.config.numerics == "host"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["numerics"] == "host"


def test_numerics_fingerprint_reports_each_run_against_its_golden_hash(capsys):
    out = grokfast.numerics_fingerprint(["paper-real-16-models"])
    assert out["paper-real-16-models"]["match"], out
    assert "matches golden" in capsys.readouterr().out


def test_readme_example_output_is_what_the_first_command_prints():
    """The README's paper-real block (grok step, final losses, ‖θ‖, the bar's ‖θ‖) equals what
    `grokfast train --preset paper-real` computes (~15 s): portable numerics make it hold on every
    x86-64 CPU."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("## What the output means", 1)[1].split("```", 2)[1]
    res = grokfast.train(Config.preset("paper-real"), progress=False)
    final = [line for line in res.summary().splitlines() if line.startswith(("memorized",
                                                                             "grokked", "final"))]
    for line in final:
        assert line in block, f"README block lacks {line!r}"
    bar_norm = re.search(r"‖θ‖ ([0-9.]+)\]", block).group(1)
    assert bar_norm == f"{float(res.history['norm'][-1]):.3f}"


def test_a_lone_large_model_splits_its_products_over_the_threads_with_the_same_bits():
    """A model with N·width ≥ ATen's grain alone on two threads: its kernels run split over both
    (split.CoreSplit, torch's own ops on one thread), and three steps give the parameters and
    statistics of the one-thread run bitwise (the outputs are cut, never a sum)."""
    from grokfast.backends.torch import TorchStepper
    from grokfast.backends.torch.split import CoreSplit
    c = Config(p=31, pairs="ordered", encoding="concat", train_frac=0.3, n_test=None, width=128,
               activation="quadratic", loss="mse", optimizer="adamw", lr=1e-3, weight_decay=1.0,
               log_every=1, eval_every=1)
    data = grokfast.make_dataset(c)
    runs = []
    for threads in (1, 2):
        st = TorchStepper([c], data, torch.device("cpu"), threads=threads)
        assert isinstance(st.nb_kernels, CoreSplit) == (threads == 2)
        assert st.N * st.width >= 32768 and st.threads == 1
        rows = st.advance(0, 3, np.ones(1, bool))
        runs.append((st.params(), rows))
    (W1a, W2a), rows_a = runs[0]
    (W1b, W2b), rows_b = runs[1]
    assert torch.equal(W1a, W1b) and torch.equal(W2a, W2b)
    for k in rows_a:
        assert rows_a[k].tobytes() == rows_b[k].tobytes(), k
