"""The one state-dict layout of grokfast.backends.base: checkpoints of format 1 (each backend's own key
names) are converted on load and resume bitwise; other formats are refused with a message."""
import pytest
import torch
from bitwise import assert_bitwise, assert_same_run
from variants import LOOP_VARIANTS as VARIANTS

import grokfast
from grokfast import GrokfastError
from grokfast.store import checkpoint as ckpt_mod
from grokfast.store.checkpoint import load_checkpoint, save_checkpoint, upgrade_state_v1


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    monkeypatch.setattr("grokfast.store.result.plot_curves", lambda result, path: None)


def to_format_1(launch, monkeypatch, ring_pos: int) -> None:
    """Rewrite launch/checkpoint.pt as the torch backend wrote it before format 2: the MA window as
    a ring [W, M, P] whose slot ring_pos is the oldest, the file marked format 1."""
    state = load_checkpoint(launch)
    stepper = state["stepper"]
    if "ma_window" in stepper:
        window = stepper.pop("ma_window")                        # [M, W, P] oldest first
        stepper["ring"] = window.transpose(0, 1).roll(ring_pos, dims=0).contiguous()
        stepper["ring_pos"] = ring_pos
    monkeypatch.setattr(ckpt_mod, "FORMAT", 1)
    save_checkpoint(launch, {k: v for k, v in state.items() if k != "format"})
    monkeypatch.undo()
    assert ckpt_mod.FORMAT == 2


@pytest.mark.parametrize("variant", ["adam+ma", "sgd-nesterov+ema+orthograd"])
def test_torch_format_1_checkpoint_is_converted_and_resumes_bitwise(tmp_path, monkeypatch,
                                                                    variant):
    c = VARIANTS[variant]
    whole = grokfast.train(c, backend="torch", out=tmp_path / "whole", chunk_steps=20)
    grokfast.train(c, backend="torch", out=tmp_path / "cut", chunk_steps=20, checkpoint_every=30,
                   max_steps=50)
    saved = load_checkpoint(tmp_path / "cut")["stepper"]
    to_format_1(tmp_path / "cut", monkeypatch, ring_pos=3)
    loaded = load_checkpoint(tmp_path / "cut")
    assert loaded["format"] == 2
    assert_bitwise(loaded["stepper"], saved, "converted stepper state")
    resumed = grokfast.train(None, backend="auto", resume=tmp_path / "cut")
    assert_same_run(whole, resumed)


def test_triton_format_1_state_is_converted():
    """Triton's format-1 state: W1 / W2, "buf", and the MA window in slots s % W of step s."""
    rng = torch.Generator().manual_seed(0)
    M, d_in, width, p, W, step = 2, 6, 4, 3, 3, 7
    W1, W2 = torch.randn(M, d_in, width, generator=rng), torch.randn(M, width, p, generator=rng)
    P = d_in * width + width * p
    grads = [torch.randn(M, P, generator=rng) for _ in range(step)]   # gradients of steps 0…6
    native = torch.zeros(M, W, P)
    for s, g in enumerate(grads):
        native[:, s % W] = g
    old = {"W1": W1, "W2": W2, "window": native, "buf": torch.randn(M, P, generator=rng)}
    new = upgrade_state_v1(old, "triton", step)
    assert set(new) == {"backend", "theta", "steps_taken", "momentum_buffer", "ma_window",
                        "filter_count"}
    assert new["backend"] == "triton"
    assert torch.equal(new["theta"], torch.cat([W1.reshape(M, -1), W2.reshape(M, -1)], 1))
    assert torch.equal(new["momentum_buffer"], old["buf"])
    assert torch.equal(new["ma_window"], torch.stack(grads[-W:], dim=1))      # oldest first
    assert (new["steps_taken"] == step).all() and (new["filter_count"] == step).all()


def test_reference_state_is_unchanged_by_the_conversion():
    state = {"runs": [{"model": {}, "optimizer": {"state": {}}, "filter_state": None}]}
    assert upgrade_state_v1(state, "reference", 10) == state


def test_unknown_format_is_refused_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod, "FORMAT", 3)
    save_checkpoint(tmp_path, {"step": 1})
    monkeypatch.undo()
    with pytest.raises(GrokfastError, match="has format 3.*reads formats 1 and 2.*version that "
                                            "wrote it"):
        load_checkpoint(tmp_path)
