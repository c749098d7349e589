import json
import math

import pytest

from grokfast import PRESETS, Config, GrokfastError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_valid_and_json_round_trip(name):
    c = Config.preset(name)
    assert Config.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["p"] == c.p


def test_default_is_paper_real():
    c = Config.preset("paper-real")
    assert c == Config()
    assert (c.p, c.width, c.activation, c.loss, c.loss_reduction, c.optimizer, c.lr, c.weight_decay) == \
        (11, 128, "relu", "mse", "mean", "gd", 1.0, 1e-4)
    assert c.n_pairs == 66 and c.n_test == 7 and c.n_train == 59
    assert c.paper_lambda == pytest.approx(5e-5)  # λ‖θ‖² ⇔ weight_decay = 2λ


def test_paper_sim_preset():
    c = Config.preset("paper-sim")
    assert c.p == 37 and c.width == 512 and c.n_pairs == 703 and c.n_train == round(0.7 * 703)
    assert c.init == "normal" and c.init_std == pytest.approx(37 ** -0.5)


def test_replace_and_set():
    c = Config().replace(lr=0.5, seed=3)
    assert c.lr == 0.5 and c.seed == 3
    c = c.with_setting("betas=0.9,0.98").with_setting("orthograd=true").with_setting("n_test=10")
    assert c.betas == (0.9, 0.98) and c.orthograd is True and c.n_test == 10
    c = c.with_setting("train_frac=0.5")  # one split field clears the other
    assert c.n_test is None and c.train_frac == 0.5
    assert c.replace(n_test=4).train_frac is None


@pytest.mark.parametrize("changes, words", [
    (dict(p=1), "at least 2"),
    (dict(operation="div", p=12), "prime"),
    (dict(n_test=None, train_frac=1.0), "strictly between 0 and 1"),
    (dict(n_test=None, train_frac=0.0), "strictly between 0 and 1"),
    (dict(n_test=None, train_frac=0.001), "empty train or test"),
    (dict(n_test=66), "between 1 and 65"),
    (dict(n_test=0), "between 1 and 65"),
    (dict(width=0), "at least 1 unit"),
    (dict(steps=-1), "≥ 0"),
    (dict(lr=math.inf), "finite"),
    (dict(lr=math.nan), "finite"),
    (dict(weight_decay=math.nan), "finite"),
    (dict(weight_decay=-1.0), "≥ 0"),
    (dict(activation="rleu"), "did you mean 'relu'"),
    (dict(optimizer="adamww"), "did you mean 'adamw'"),
    (dict(loss="cross_entropi"), "did you mean 'cross_entropy'"),
    (dict(train_frac=0.5), "exactly one of train_frac and n_test"),
    (dict(n_test=None), "exactly one of train_frac and n_test"),
    (dict(eval_every=150), "multiple of log_every"),
    (dict(momentum=0.9), "use optimizer='sgd'"),
    (dict(device="tpu"), "'cpu' or 'cuda'"),
])
def test_invalid_fields_raise_one_error_type(changes, words):
    with pytest.raises(GrokfastError, match=words if "(" not in words else None) as e:
        Config(**changes)
    assert words in str(e.value)


def test_unknown_names_suggest_closest():
    with pytest.raises(GrokfastError, match="did you mean 'weight_decay'"):
        Config().replace(weight_decy=1.0)
    with pytest.raises(GrokfastError, match="did you mean 'paper-real'"):
        Config.preset("paper_real")
    with pytest.raises(GrokfastError, match="did you mean 'lr'"):
        Config().with_setting("lrr=3")
    with pytest.raises(GrokfastError, match="key=value"):
        Config().with_setting("lr")
    with pytest.raises(GrokfastError, match="cannot read"):
        Config().with_setting("width=wide")
