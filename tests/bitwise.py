"""Bitwise equality of runs: tensors, arrays (NaN included), containers, and whole Results."""
from collections import deque

import numpy as np
import torch

import grokfast
from grokfast import Result


def assert_bitwise(a, b, where="state"):
    """Equal bit for bit: tensors, arrays (NaN included), and the containers holding them."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_bitwise(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple, deque)):
        assert type(a) is type(b) and len(a) == len(b), where
        if isinstance(a, deque):
            assert a.maxlen == b.maxlen, where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a: Result, b: Result):
    assert set(a.history) == set(b.history) == set(grokfast.STAT_NAMES)
    for k in grokfast.STAT_NAMES:
        assert_bitwise(np.asarray(a.history[k]), np.asarray(b.history[k]), f"history.{k}")
    assert_bitwise(a.params, b.params, "params")
    assert a.steps_done == b.steps_done and a.diverged == b.diverged
