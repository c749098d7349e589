import pytest
import torch

from grokfast import Config, make_dataset
from grokfast.data import all_pairs, labels_of


@pytest.mark.parametrize("p", [2, 5, 11, 37])
def test_pair_counts(p):
    c = Config(p=p, n_test=1)
    assert len(all_pairs(c)) == p * (p + 1) // 2 == c.n_pairs
    c = c.replace(pairs="ordered")
    assert len(all_pairs(c)) == p * p == c.n_pairs
    if p in (5, 11, 37):
        c = Config(p=p, n_test=1, operation="div")
        pairs = all_pairs(c)
        assert len(pairs) == c.n_pairs and (pairs[:, 1] != 0).all()
        c = c.replace(pairs="ordered")
        assert len(all_pairs(c)) == p * (p - 1) == c.n_pairs


@pytest.mark.parametrize("op, f", [
    ("add", lambda a, b, p: (a + b) % p),
    ("sub", lambda a, b, p: (a - b) % p),
    ("mul", lambda a, b, p: (a * b) % p),
    ("a2+b2", lambda a, b, p: (a * a + b * b) % p),
    ("a2+ab+b2", lambda a, b, p: (a * a + a * b + b * b) % p),
    ("a3+ab", lambda a, b, p: (a * a * a + a * b) % p),
])
def test_operation_tables(op, f):
    c = Config(p=7, pairs="ordered", operation=op, n_test=3)
    pairs = all_pairs(c)
    labels = labels_of(c, pairs)
    for (a, b), y in zip(pairs.tolist(), labels.tolist()):
        assert y == f(a, b, 7)


def test_division_uses_the_modular_inverse():
    c = Config(p=11, pairs="ordered", operation="div", n_test=3)
    pairs = all_pairs(c)
    for (a, b), y in zip(pairs.tolist(), labels_of(c, pairs).tolist()):
        assert (y * b) % 11 == a


def test_split_is_deterministic_disjoint_and_complete():
    c = Config(p=11, n_test=None, train_frac=0.6, split_seed=3)
    d1, d2 = make_dataset(c), make_dataset(c)
    assert torch.equal(d1.train_pairs, d2.train_pairs) and torch.equal(d1.test_pairs, d2.test_pairs)
    assert len(d1.train_pairs) == round(0.6 * 66) == c.n_train
    train = {tuple(x) for x in d1.train_pairs.tolist()}
    test = {tuple(x) for x in d1.test_pairs.tolist()}
    assert not train & test and train | test == {tuple(x) for x in all_pairs(c).tolist()}
    other = make_dataset(c.replace(split_seed=4))
    assert not torch.equal(other.train_pairs, d1.train_pairs)
    # the split does not depend on the init seed
    assert torch.equal(make_dataset(c.replace(seed=9)).train_pairs, d1.train_pairs)


def test_label_noise_changes_exactly_that_many_training_labels():
    c = Config(p=11, n_test=None, train_frac=0.5, label_noise=0.2)
    d = make_dataset(c)
    changed = (d.train_labels != d.train_labels_clean).sum().item()
    assert changed == round(0.2 * len(d.train_labels))
    assert torch.equal(d.test_labels, labels_of(c, d.test_pairs))


@pytest.mark.parametrize("encoding", ["sum", "concat"])
def test_inputs_and_gather_agree(encoding):
    c = Config(p=7, encoding=encoding, pairs="ordered", n_test=5)
    d = make_dataset(c)
    X = d.X_train
    assert X.shape == (c.n_train, c.d_in) and torch.all(X.sum(1) == 2)
    if encoding == "sum":  # a = b gives 2·e_a
        same = d.train_pairs[:, 0] == d.train_pairs[:, 1]
        assert same.any() and (X[same].max(1).values == 2).all()
    W1 = torch.randn(c.d_in, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    idx = d.index_train
    assert torch.equal(X @ W1, W1[idx[:, 0]] + W1[idx[:, 1]])
    assert torch.equal(d.Y_train.argmax(1), d.train_labels)
