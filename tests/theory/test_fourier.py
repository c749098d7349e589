"""Fourier modes, circle statistics, key frequencies, IPR, restricted and excluded loss."""
import math

import pytest
import torch
from tolerances import assert_close

from grokfast import Config, make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import data_loss, forward, init_params
from grokfast.theory.fourier import (
    circle_statistics,
    embedding_blocks,
    fourier_modes,
    frequency_power,
    key_frequencies,
    neuron_ipr,
    output_fourier_projector,
    restricted_excluded_loss,
)

P = 13
K = (P - 1) // 2


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def perfect_circles(p: int, units_per_freq: int, phases, gen) -> torch.Tensor:
    """E [p, K·units] with one circle per frequency k on its own units: E_j = u_k cos(ω_k j + φ_k) +
    v_k sin(ω_k j + φ_k), u_k ⟂ v_k, |u_k| = |v_k| elementwise (so ‖u_k‖ = ‖v_k‖)."""
    K = (p - 1) // 2
    E = torch.zeros(p, K * units_per_freq, dtype=torch.float64)
    j = torch.arange(p, dtype=torch.float64)
    for k in range(1, K + 1):
        mag = 0.5 + torch.arange(units_per_freq // 2, dtype=torch.float64) / units_per_freq
        u = torch.cat([mag, mag])
        v = torch.cat([mag, -mag])                    # ⟨u, v⟩ = Σ mag² − Σ mag² = 0
        u, v = u * (k + 1), v * (k + 1)               # a different radius per frequency
        cols = slice((k - 1) * units_per_freq, k * units_per_freq)
        angle = 2 * math.pi * k * j / p + phases[k - 1]
        E[:, cols] = torch.cos(angle)[:, None] * u + torch.sin(angle)[:, None] * v
    return E


def test_modes_match_the_defining_sum():
    gen = torch.Generator().manual_seed(0)
    E = torch.randn(3, P, 10, generator=gen, dtype=torch.float64)
    F = fourier_modes(E)
    j = torch.arange(P, dtype=torch.float64)
    for k in range(1, K + 1):
        w = torch.exp(-2j * math.pi * j * k / P)
        expected = (w[:, None] * E.to(torch.complex128)).sum(-2) / P
        assert_close(torch.view_as_real(F[:, k - 1]), torch.view_as_real(expected), f"F_{k}")


def test_perfect_circles_in_phase():
    E = perfect_circles(P, 4, [0.0] * K, torch.Generator().manual_seed(1))
    st = circle_statistics(E)
    ones = torch.ones(K, dtype=torch.float64)
    assert_close(st["ratio"], ones, "‖Re F_k‖/‖Im F_k‖")
    assert_close(st["angle"], 90 * ones, "angle(Re F_k, Im F_k)")
    assert_close(st["sim_within"], ones, "cos(|Re F_k|, |Im F_k|)")
    assert_close(st["sim_across"], torch.zeros(K, dtype=torch.float64), "across frequencies")


def test_perfect_circles_any_phase_keep_ratio_angle_and_disjoint_supports():
    gen = torch.Generator().manual_seed(2)
    phases = (torch.rand(K, generator=gen, dtype=torch.float64) * 2 * math.pi).tolist()
    st = circle_statistics(perfect_circles(P, 4, phases, gen))
    ones = torch.ones(K, dtype=torch.float64)
    assert_close(st["ratio"], ones, "ratio, random phases")
    assert_close(st["angle"], 90 * ones, "angle, random phases")
    assert_close(st["sim_across"], torch.zeros(K, dtype=torch.float64), "across, random phases")
    # power of circle k: ‖F_k‖² = (‖u‖² + ‖v‖²)/4 = ‖u‖²/2
    assert torch.all(st["power"][1:] > st["power"][:-1])


def test_batched_statistics_equal_one_by_one():
    gen = torch.Generator().manual_seed(3)
    E = torch.randn(4, P, 16, generator=gen, dtype=torch.float64)
    batched = circle_statistics(E)
    for i in range(4):
        single = circle_statistics(E[i])
        for name in batched:
            assert_close(batched[name][i], single[name], f"{name}[{i}]")


def test_degenerate_frequency_is_nan_not_a_number_made_up():
    gen = torch.Generator().manual_seed(4)
    E = torch.randn(2, P, 8, generator=gen, dtype=torch.float64)
    E[1] = 0.0                                       # no structure at all: nothing is defined
    st = circle_statistics(E)
    for name in ("ratio", "angle", "sim_within", "sim_across"):
        assert torch.isnan(st[name][1]).all(), name
        assert torch.isfinite(st[name][0]).all(), name
    assert torch.equal(st["power"][1], torch.zeros(K, dtype=torch.float64))


def test_key_frequencies_order_by_power():
    E = perfect_circles(P, 4, [0.3] * K, torch.Generator().manual_seed(5))
    assert key_frequencies(E, P, n_keys=3).tolist() == [6, 5, 4]
    power = frequency_power(E, P)
    keys = key_frequencies(E, P, mass=0.5)
    # the fewest frequencies holding half the power
    assert power[keys - 1].sum() >= 0.5 * power.sum()
    assert power[keys[:-1] - 1].sum() < 0.5 * power.sum()
    with pytest.raises(GrokfastError):
        key_frequencies(E, P, n_keys=K + 1)


def test_concat_blocks_are_analysed_separately():
    gen = torch.Generator().manual_seed(6)
    Ea = perfect_circles(P, 4, [0.0] * K, gen)
    Eb = torch.randn(P, Ea.shape[1], generator=gen, dtype=torch.float64)
    blocks = embedding_blocks(torch.cat([Ea, Eb]), P, "concat")
    assert set(blocks) == {"_a", "_b"}
    assert torch.equal(blocks["_a"], Ea) and torch.equal(blocks["_b"], Eb)
    with pytest.raises(GrokfastError):
        embedding_blocks(Ea, P, "concat")


@pytest.mark.parametrize("p", [13, 12])
def test_ipr_limits(p):
    W = torch.zeros(p, 3, dtype=torch.float64)
    j = torch.arange(p, dtype=torch.float64)
    W[:, 0] = torch.cos(2 * math.pi * 2 * j / p + 0.4)      # one frequency → 1
    W[0, 1] = 1.5                                            # a delta: flat spectrum
    W[:, 2] = 0.7                                            # constant: only k = 0 → 1
    ipr = neuron_ipr(W, axis=-2)
    m = (p - 1) // 2
    # delta: |c_k| = 1.5 for all k; folded P = [1, 2×m, (1 if even)]·1.5²
    flat = (1 + 4 * m + (p % 2 == 0)) / (1 + 2 * m + (p % 2 == 0)) ** 2
    assert_close(ipr, torch.tensor([1.0, flat, 1.0], dtype=torch.float64), "IPR")
    assert_close(neuron_ipr(W.T.contiguous(), axis=-1), ipr, "IPR along the last axis")


def test_output_projector_is_an_orthogonal_projector():
    Pk = output_fourier_projector(P, [2, 5])
    assert_close(Pk @ Pk, Pk, "P² = P")
    assert_close(Pk, Pk.T, "P = Pᵀ")
    assert_close(torch.trace(Pk), torch.tensor(4.0, dtype=torch.float64), "rank 4")
    c = torch.arange(P, dtype=torch.float64)
    v = torch.cos(2 * math.pi * 5 * c / P + 0.3)
    assert_close(v @ Pk, v, "key frequency kept")
    w = torch.cos(2 * math.pi * 3 * c / P)
    assert_close(w @ Pk, torch.zeros(P, dtype=torch.float64), "other frequency removed")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_restricted_and_excluded_loss_extremes(loss):
    config = Config(p=P, width=32, loss=loss, n_test=20)
    data = make_dataset(config)
    W1, W2 = (t.double() for t in init_params(config))
    every = list(range(1, K + 1))
    full = restricted_excluded_loss(config, data, W1, W2, every)
    for split in ("train", "test"):
        # all frequencies + the constant span R^p: restricting changes nothing
        assert_close(f64(full[f"{split}_restricted_loss"]),
                     f64(full[f"{split}_loss"]), f"{split} restricted, all keys")
    none_kept = restricted_excluded_loss(config, data, W1, W2, [])
    assert_close(f64(none_kept["train_excluded_loss"]), f64(none_kept["train_loss"]),
                 "excluding no frequency")
    # excluding every frequency leaves each sample's mean logit over the classes
    logits = forward(W1, W2, data.index_train, config.activation)
    mean_only = logits.mean(-1, keepdim=True).expand_as(logits)
    assert_close(f64(full["train_excluded_loss"]),
                 data_loss(mean_only, data.train_labels, config), "excluding every frequency")
