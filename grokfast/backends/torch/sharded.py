"""Threads over models for the torch backend: a launch of many small models cut into contiguous
shards, each a TorchStepper with one intra-op thread, all stepped at once in a thread pool.
paths.shard_count decides how many; grokfast.backends.torch.make_stepper builds a ShardedStepper
when it is more than one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.errors import GrokfastError

from .split import wait_all
from .stepper import TorchStepper


class ShardedStepper:
    """The torch backend over contiguous shards of the models, stepped by a pool of threads.

    For a launch of many small models: each shard is a TorchStepper (one intra-op thread, its own
    buffers) and all shards advance at once in a thread pool (torch ops and the numba kernels run
    without the GIL). A model's bits are those of the same model in any other batch, alone
    included (batch invariance), so sharding never changes a result. State dicts use the
    layout of grokfast.backends.base (models on the first axis of every array, the MA window oldest
    first), so a checkpoint resumes with any sharding.
    """

    backend = "torch"

    def __init__(self, configs: Sequence[Config], data: Dataset, device, n_shards: int, **kw):
        M = len(configs)
        self.bounds = [round(k * M / n_shards) for k in range(n_shards + 1)]
        self.shards = [TorchStepper(configs[a:b], data, device, threads=1, **kw)
                       for a, b in zip(self.bounds, self.bounds[1:])]
        self.M, self.configs = M, list(configs)
        threads = max(1, min(n_shards, torch.get_num_threads()))  # the shards share them
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="grokfast-shard")

    @property
    def n_models(self) -> int:
        return self.M

    @property
    def preferred_chunk(self) -> int:
        return self.shards[0].preferred_chunk

    def _each(self, fn, *per_shard) -> list:
        """fn(shard, *args_k) for every shard k at once; waits for all (even on an error)."""
        old = torch.get_num_threads()
        torch.set_num_threads(1)  # every shard's GEMMs single-threaded, as a lone model's are
        futures = []
        try:
            futures = [self.pool.submit(fn, sh, *(a[k] for a in per_shard))
                       for k, sh in enumerate(self.shards)]
            wait(futures)
            return [f.result() for f in futures]
        finally:
            # a Ctrl-C while waiting: every shard still finishes its chunk, so no shard's state
            # is left half-stepped and the launch stays consistent for a checkpoint
            wait_all(futures)
            torch.set_num_threads(old)

    def _cut(self, x) -> list:
        """x's rows of each shard (a tensor or array with the models on its first axis)."""
        return [x[a:b] for a, b in zip(self.bounds, self.bounds[1:])]

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict:
        parts = self._each(lambda sh, act: sh.advance(step0, n_steps, act),
                           self._cut(np.asarray(active, dtype=bool)))
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        W1s, W2s = zip(*(sh.params() for sh in self.shards))
        return torch.cat(W1s), torch.cat(W2s)

    def state_dict(self) -> dict:
        states = [sh.state_dict() for sh in self.shards]
        merged = {}
        for key, value in states[0].items():
            if torch.is_tensor(value):
                merged[key] = torch.cat([st[key] for st in states])
            elif isinstance(value, np.ndarray):
                merged[key] = np.concatenate([st[key] for st in states])
            else:
                merged[key] = value
        return merged

    def load_state_dict(self, state: dict) -> None:
        theta = state.get("theta")
        if state.get("backend") != self.backend or theta is None or theta.shape[0] != self.M:
            raise GrokfastError("this state was not saved by a torch-backend stepper of the same "
                                "models and shapes; resume with the backend and configs it was "
                                "saved with")
        for k, sh in enumerate(self.shards):
            sh.load_state_dict({key: self._cut(value)[k] if torch.is_tensor(value)
                                or isinstance(value, np.ndarray) else value
                                for key, value in state.items()})
