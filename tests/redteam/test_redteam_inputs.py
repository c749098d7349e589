"""Red team, bad inputs: each is one GrokfastError (CLI: one `error:` line, exit 2) before any
work, and the directory it was pointed at is left as it was (not even created)."""
import pytest
from redteam_helpers import TINY, assert_clean_error, run_cli, snapshot, tiny_args

import grokfast
from grokfast import Config, GrokfastError
from grokfast.config import PRESETS


@pytest.mark.parametrize("changes, words", [
    (dict(seed=2 ** 63), r"2\*\*63"),
    (dict(split_seed=2 ** 64), r"2\*\*63"),
    (dict(seed=-1), r"2\*\*63"),
    (dict(device="cuda:abc"), "device"),
    (dict(device="gpu"), "device"),
    (dict(device="cuda:"), "device"),
    (dict(betas="ab"), "betas"),
    (dict(betas=(0.9,)), "betas"),
    (dict(betas=None), "betas"),
    (dict(width=1.5), "width"),
    (dict(log_every=1000), "eval_every"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_config_values(changes, words):
    with pytest.raises(GrokfastError, match=words):
        Config.preset("paper-real", **changes)


@pytest.mark.parametrize("seeds, words", [
    ("abc", "list of integers"), (5, "list of integers"), ([1.7], "not an integer"),
    ([0, 0], "twice"), ([-1], "outside"), ([True], "not an integer"), ([2 ** 63], "outside"),
    ([], "empty"), (["1"], "not an integer"),
], ids=["str", "int", "float", "duplicate", "negative", "bool", "huge", "empty", "str-item"])
def test_bad_seeds_train_and_sweep(tmp_path, seeds, words):
    with pytest.raises(GrokfastError, match=words):
        grokfast.train(TINY, seeds=seeds, out=tmp_path / "run")
    with pytest.raises(GrokfastError, match=words):
        grokfast.sweep(TINY, grid={"lr": [1.0]}, seeds=seeds, out=tmp_path / "sw")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sw").exists()


def test_integer_valued_float_seed_is_that_seed():
    assert [r.config.seed for r in grokfast.train(TINY.replace(steps=10), seeds=[2.0])] == [2]


@pytest.mark.parametrize("options, words", [
    (dict(chunk_steps=2.5), "chunk_steps"), (dict(chunk_steps="10"), "chunk_steps"),
    (dict(chunk_steps=0), "chunk_steps"), (dict(checkpoint_every=1.5), "checkpoint_every"),
    (dict(max_steps=-1), "max_steps"), (dict(stop_patience=True), "stop_patience"),
    (dict(checkpoint_seconds=float("nan")), "checkpoint_seconds"),
], ids=["chunk-float", "chunk-str", "chunk-0", "every-float", "max-steps", "patience-bool",
        "seconds-nan"])
def test_bad_run_options(tmp_path, options, words):
    with pytest.raises(GrokfastError, match=words):
        grokfast.train(TINY, out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_reference_train_refuses_another_backend():
    with pytest.raises(GrokfastError, match="grokfast.train"):
        grokfast.reference.train(TINY, backend="torch")
    assert grokfast.reference.train(TINY.replace(steps=5), backend="reference").steps_done == 5


def test_width_too_large_to_allocate(tmp_path):
    with pytest.raises(GrokfastError, match="memory"):
        grokfast.train(TINY.replace(width=2 ** 40), backend="torch", out=tmp_path / "run")


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0,0"], "twice"), (["--seeds", "abc"], "--seeds"),
    (["--set", f"seed={2 ** 63}"], "2**63"), (["--set", "device=cuda:abc"], "device"),
    (["--set", "betas=ab"], "betas"), (["--set", "nope=1"], "unknown config field"),
], ids=["dup-seeds", "bad-seeds", "huge-seed", "device", "betas", "field"])
def test_cli_bad_input_one_error_line(tmp_path, capsys, args, words):
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "train", *tiny_args(), *args, "--out", tmp_path / "run")
    assert_clean_error(code, err, words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("order", [("log_every=1000", "eval_every=1000"),
                                   ("eval_every=1000", "log_every=1000")])
def test_set_order_never_matters(tmp_path, capsys, order):
    code, out, err = run_cli(capsys, "train", "--set", "steps=1000", "--set", order[0], "--set",
                             order[1], "--backend", "torch", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    c = Config.preset("paper-real").with_settings(["train_frac=0.5", "n_test=3"])
    assert c.n_test == 3 and c.train_frac is None
    assert Config.preset("paper-real").with_settings(["lr=2", "lr=3"]).lr == 3


def test_presets_still_valid():
    for name in PRESETS:
        Config.preset(name)
