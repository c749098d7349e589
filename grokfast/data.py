"""The modular-arithmetic task: pairs, labels, the train/test split, and the network's inputs.

The first layer is a gather: for the sum encoding X_i = e_a + e_b, so X W1 = W1[a] + W1[b]; for the
concat encoding X_i = [e_a; e_b], so X W1 = W1[a] + W1[p + b]. `Dataset.index_*` hold those two row
indices per sample; `Dataset.X_*` builds the dense inputs for anyone checking a result independently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import Config
from .errors import GrokfastError

_OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, p - 2, p)) % p,  # b⁻¹ = b^(p−2) mod p (Fermat), p prime
    "a2+b2": lambda a, b, p: (a * a + b * b) % p,
    "a2+ab+b2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "a3+ab": lambda a, b, p: (a ** 3 + a * b) % p,
}


def all_pairs(config: Config) -> torch.Tensor:
    """Every (a, b) sample of the task, [n_pairs, 2] int64, in lexicographic order."""
    p = config.p
    b_min = 1 if config.operation == "div" else 0
    pairs = [(a, b) for a in range(p) for b in range(b_min, p)
             if config.pairs == "ordered" or a <= b]
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def labels_of(config: Config, pairs: torch.Tensor) -> torch.Tensor:
    op = _OPS[config.operation]
    return torch.tensor([op(int(a), int(b), config.p) for a, b in pairs.tolist()], dtype=torch.int64)


@dataclass
class Dataset:
    """A split of the task. Pairs are [n, 2] int64 (a, b); labels are [n] int64 in [0, p).

    ``train_labels`` carry the label noise (if any); ``train_labels_clean`` are the true results.
    Rows of each split are in lexicographic order of (a, b).
    """

    p: int
    encoding: str
    train_pairs: torch.Tensor
    train_labels: torch.Tensor
    train_labels_clean: torch.Tensor
    test_pairs: torch.Tensor
    test_labels: torch.Tensor

    @property
    def d_in(self) -> int:
        return self.p if self.encoding == "sum" else 2 * self.p

    def index(self, pairs: torch.Tensor) -> torch.Tensor:
        """Rows of W1 that each sample adds: [n, 2] int64."""
        return pairs if self.encoding == "sum" else torch.stack([pairs[:, 0], pairs[:, 1] + self.p], 1)

    @property
    def index_train(self) -> torch.Tensor:
        return self.index(self.train_pairs)

    @property
    def index_test(self) -> torch.Tensor:
        return self.index(self.test_pairs)

    def inputs(self, pairs: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """Dense inputs X, [n, d_in]: e_a + e_b (sum; 2·e_a when a = b) or [e_a; e_b] (concat)."""
        idx = self.index(pairs)
        X = torch.zeros(len(pairs), self.d_in, dtype=dtype)
        X.index_put_((torch.arange(len(pairs)), idx[:, 0]), torch.ones(len(pairs), dtype=dtype),
                     accumulate=True)
        X.index_put_((torch.arange(len(pairs)), idx[:, 1]), torch.ones(len(pairs), dtype=dtype),
                     accumulate=True)
        return X

    @property
    def X_train(self) -> torch.Tensor:
        return self.inputs(self.train_pairs)

    @property
    def X_test(self) -> torch.Tensor:
        return self.inputs(self.test_pairs)

    def targets(self, labels: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """One-hot targets Y, [n, p]."""
        return torch.nn.functional.one_hot(labels, self.p).to(dtype)

    @property
    def Y_train(self) -> torch.Tensor:
        return self.targets(self.train_labels)

    @property
    def Y_test(self) -> torch.Tensor:
        return self.targets(self.test_labels)


PAIR_BYTES = 40  # per pair at least: its int64 (a, b), label, permutation place and split index


def memory_estimate(config: Config) -> dict:
    """Bytes one model of `config` needs at least, by part: "dataset" (the pairs, labels and
    split), "activations" (hidden layer and logits of the full training batch, once),
    "parameters" (W1, W2 and their gradients)."""
    item = 8 if config.dtype == "float64" else 4
    return {"dataset": config.n_pairs * PAIR_BYTES,
            "activations": config.n_train * (config.width + config.p) * item,
            "parameters": 2 * (config.d_in + config.p) * config.width * item}


def check_memory(config: Config, available: int = None) -> None:
    """GrokfastError at once, before anything is allocated, when memory_estimate exceeds this
    machine's memory (`available` bytes; default its physical memory), naming the field to change."""
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return
    need = memory_estimate(config)
    total = sum(need.values())
    if total <= available:
        return
    part = max(need, key=need.get)
    field = "width" if part != "dataset" and config.width > config.p else "p"
    parts = ", ".join(f"{k} {v / 2 ** 30:.3g} GiB" for k, v in need.items())
    raise GrokfastError(f"p={config.p}, width={config.width}: not enough memory for one model, "
                        f"which needs at least {total / 2 ** 30:.3g} GiB ({parts}; "
                        f"{config.n_pairs} pairs) where this machine has {available / 2 ** 30:.3g} "
                        f"GiB: lower {field}")


def make_dataset(config: Config) -> Dataset:
    """The train and test split of `config`'s task (CPU tensors; deterministic in split_seed).

    The split draws a permutation of all pairs with torch.Generator(split_seed): the first n_train
    (round(train_frac·n_pairs), or n_pairs − n_test) go to training. Label noise replaces
    round(label_noise·n_train) training labels, chosen with the same generator, by a uniformly drawn
    different class.
    """
    check_memory(config)
    pairs = all_pairs(config)
    labels = labels_of(config, pairs)
    gen = torch.Generator().manual_seed(config.split_seed)
    perm = torch.randperm(len(pairs), generator=gen)
    train_idx = perm[: config.n_train].sort().values
    test_idx = perm[config.n_train:].sort().values
    train_labels = labels[train_idx].clone()
    n_noisy = round(config.label_noise * len(train_idx))
    if n_noisy:
        rows = torch.randperm(len(train_idx), generator=gen)[:n_noisy]
        shift = torch.randint(1, config.p, (n_noisy,), generator=gen)
        train_labels[rows] = (train_labels[rows] + shift) % config.p
    return Dataset(p=config.p, encoding=config.encoding,
                   train_pairs=pairs[train_idx], train_labels=train_labels,
                   train_labels_clean=labels[train_idx],
                   test_pairs=pairs[test_idx], test_labels=labels[test_idx])
