"""The stepper contract: what every backend provides, which configs may share a launch, and which
backend a name selects.

A backend is a *stepper* over a batch of models that share every shape (the model axis):

    stepper = Stepper(configs, data, device)
    rows = stepper.advance(step0, n_steps, active)   # name → [n_models, n_rows] for recorded steps
    W1, W2 = stepper.params()                         # [n_models, ...] CPU tensors
    stepper.state_dict() / stepper.load_state_dict()  # everything needed to continue bitwise

State dicts (the torch and triton backends; checkpoint format 2). One layout and one set of key
names, M models on the first axis of every array, P = d_in·width + width·p parameters per model:

    backend          "torch" or "triton" (a stepper loads only its own backend's state)
    theta            [M, P]    W1 (row-major [d_in, width]) then W2 ([width, p]) of each model
    steps_taken      int64 [M] optimizer steps per model (triton: the launch's step for every model)
    momentum_buffer  [M, P]    optimizer "sgd" (torch.optim.SGD's name)
    exp_avg          [M, P]    optimizer "adam" / "adamw" (torch.optim.Adam's names)
    exp_avg_sq       [M, P]
    ema              [M, P]    grad_filter "ema": the running average μ
    ma_window        [M, W, P] grad_filter "ma": the last W raw gradients, oldest first, newest at
                               [:, W − 1]; slots not yet filled are 0 and come first
    filter_count     int64 [M] grad_filter "ema" / "ma": filter calls per model
    target_norm      [M]       torch only: the fixed-norm target ‖θ_0‖ in the working dtype

The reference backend saves torch.optim's own state dicts ({"runs": [...]}: model, optimizer,
filter state per model), whose optimizer keys are the names above. Checkpoints of format 1 (grokfast
0.1.0 before this layout: torch "ring" + "ring_pos", triton "W1", "W2", "buf", "window" in slots
s % W) are converted on load by `grokfast.store.checkpoint.upgrade_state_v1`.

This module depends only on the config and the errors; the backends import it, and the engine
imports it; grokfast.backends.registry names the backends (its lazy imports point down into them).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from grokfast.config import Config
from grokfast.errors import GrokfastError

BACKENDS = ("auto", "triton", "torch", "reference")

# Fields every model of one launch must share: they fix the data, the shapes or the loop.
SHARED_FIELDS = ("p", "operation", "pairs", "encoding", "train_frac", "n_test", "split_seed",
                 "label_noise", "width", "activation", "loss", "loss_reduction", "loss_dtype",
                 "optimizer", "grad_filter", "filter_window", "filter_type", "filter_warmup",
                 "orthograd", "fixed_norm", "steps", "dtype", "device", "precision", "numerics",
                 "log_every", "eval_every")


@runtime_checkable
class Stepper(Protocol):
    """A batch of models stepped together; the engine owns everything else (grokfast.engine)."""

    backend: str

    @property
    def n_models(self) -> int: ...

    @property
    def preferred_chunk(self) -> int:
        """Steps per `advance` call the backend runs best at (the engine rounds to log_every)."""

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict[str, np.ndarray]:
        """Run updates step0 … step0+n_steps−1 on the models where `active` (bool [n_models]);
        return the recorded rows, name → [n_models, n_rows]."""

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W1 [n_models, d_in, width], W2 [n_models, width, p] as CPU tensors."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_batch(configs: Sequence[Config]) -> None:
    """Models of one launch must agree on SHARED_FIELDS; say which field differs and what to do."""
    first = configs[0]
    for c in configs[1:]:
        for name in SHARED_FIELDS:
            if getattr(c, name) != getattr(first, name):
                raise GrokfastError(
                    f"models of one launch must share {name!r} ({getattr(first, name)!r} vs "
                    f"{getattr(c, name)!r}); run separate launches for different {name}")
