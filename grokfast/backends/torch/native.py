"""The native chunk loop of the torch backend: a chunk of steps of a shard of small models in
one numba call (kernels/cpu/loop.py), for the configurations it covers.

TorchStepper.advance runs a chunk step by step in Python (forward and backward in numba, the loss
gradient, the optimizer and the statistics in between). Where `native_loop` returns a NativeLoop,
the stepper hands it the chunk instead: the whole chunk is one call of
kernels/cpu/loop.mse_chunk over the stepping models, logged and eval steps included. The kernel
calls the same @njit stages as the per-step path, and reduces the statistics of logged steps
(kernels/cpu/loop_stats.py: the per-step path's products and row_sums' order) into the chunk's
rows; the roots and cosines are then formed from those sums for all rows at once by the per-step
path's own code (stats.finish_before / finish_after). So θ, the gradient and every history row are
bitwise those of the per-step path (tests/backends/test_native_loop.py), whatever the chunk
boundaries.

Covered: portable numerics on the CPU with the numba kernels on one thread per model (every small
model, alone or sharded), ReLU or x², MSE, cross-entropy and stablemax (mean or sum, float32 or
float64 loss dtype; exp and log written in the source, kernels/cpu/elementary.py), GD and SGD
with momentum and Nesterov, Adam and AdamW (the per-step path's own numba update,
kernels/cpu/adam.py), with or without weight decay, warmup (the per-step scalars come from the
optimizer's schedule), Grokfast EMA and MA filters (and their lr switch), ⊥Grad and fixed norm
(kernels/cpu/loop_norms.py: the per-step path's operations, IEEE square roots in both), float32
and float64. `why_not` names what sends a launch to the per-step path.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from grokfast.model import STAT_NAMES

from .grad_filters import EMAFilter, MAFilter
from .loss import loss_args
from .optim import GD, SGD, Adam, Schedule
from .stats import STAT_INDEX, finish_after, finish_before


PIECE_SECONDS = 0.25     # the wall time a native call aims at


def why_not(st) -> Optional[str]:
    """Why TorchStepper `st` cannot use the native loop (None: it can)."""
    c = st.config
    if st.cpu_grad is None or not st.portable:
        return "needs the numba kernels with numerics='portable' on the CPU"
    if st.nb_kernels is not st.cpu_grad:
        return "a model split over several threads (a large model) steps per step"
    if st.loss_grad.fused is None:
        return "the loss gradient needs contiguous buffers (portable numerics on the CPU)"
    if not ((type(st.opt) is GD and st.opt.gd_kernel is not None)
            or (type(st.opt) is SGD and not st.opt.fused)
            or (type(st.opt) is Adam and st.opt.adam_kernel is not None)):
        return (f"optimizer={c.optimizer!r} is on the per-step path (the native loop covers GD, "
                f"SGD, Adam and AdamW)")
    return None


def native_loop(st) -> Optional["NativeLoop"]:
    """A NativeLoop for TorchStepper `st`, or None where why_not(st) gives a reason."""
    return NativeLoop(st) if why_not(st) is None else None


class NativeLoop:
    """Runs TorchStepper.advance's steps natively, statistics rows included."""

    def __init__(self, st):
        from grokfast.kernels.cpu import loop
        from grokfast.kernels.cpu.loop_loss import MSE

        self.kernel, self.opt = loop, st.opt
        nb, opt = st.nb, st.opt
        _, labels, _, scale = st.loss_grad.fused
        self.loss = _loss_args(st)
        if self.loss[0] != MSE:
            scale = nb["zero"].dtype.type(1)   # the kernel's 1 (scale/scale); the loss tuple
                                               # carries cross-entropy's / stablemax's arguments
        self.wd = _per_model(opt.wd)
        self.args = (nb["i0"], nb["i1"], labels, nb["order"], nb["starts"], st.d_in * st.width,
                     not st.relu, nb["zero"], scale)
        if type(opt) is SGD:   # torch.optim.SGD's launch-wide switches and per-model scalars
            self.sgd = (True, opt.any_wd, opt.use_momentum,
                        _per_model(opt.momentum), _per_model(opt.nesterov))
            self.buf = opt.momentum_buffer.numpy()
        else:                  # GD, Adam: the SGD arguments unused but Adam's any_wd (same
            self.sgd = (False, type(opt) is Adam and opt.any_wd, False, self.wd,  # types, one
                        np.zeros(st.M, dtype=np.bool_))                       # compiled kernel)
            self.buf = nb["theta"]
        self.opt_args = self._opt_args(st)
        self.buffers = (nb["Z"], nb["H"], nb["dH"], nb["w2t"], nb["g2t"], nb["logits"],
                        nb["dlogits"])
        self.stats = self._stats_args(st)
        self.ring = st.filter if type(st.filter) is MAFilter else None
        self.piece = 1            # steps per native call, then sized by time (run)

    def _filter_args(self, st) -> tuple:
        """mse_chunk's `filt` for the stepper's gradient filter (grad_filters.py) at this call."""
        from grokfast.kernels.cpu.loop import EMA, MA, NONE

        f, theta = st.filter, st.nb["theta"]
        if type(f) is EMAFilter:
            return (EMA, f.ema.numpy(), _per_model(f.filter_alpha),
                    _per_model(f.filter_one_minus_alpha), _per_model(f.filter_lamb),
                    f.filter_count + st.offset, theta[None], 0, False, False)
        if type(f) is MAFilter:
            return (MA, theta, self.wd, self.wd, _per_model(f.filter_lamb),
                    f.filter_count + st.offset, f.ring.numpy(), f.ring_pos, f.warmup, f.mean)
        return (NONE, theta, self.wd, self.wd, self.wd, np.zeros(st.M, np.int64), theta[None],
                0, False, False)

    def _opt_args(self, st) -> tuple:
        """mse_chunk's `opt` but its per-step tables (bc2_sqrt, decay: _call fills them in):
        Adam's state and per-model scalars, the ⊥Grad and fixed-norm switches and targets."""
        opt, theta, dt = st.opt, st.nb["theta"], st.nb["theta"].dtype.type
        if type(opt) is Adam:
            adam = (True, opt.exp_avg.numpy(), opt.exp_avg_sq.numpy(),
                    *(_per_model(x) for x in (opt.one_minus_beta1, opt.beta2,
                                              opt.one_minus_beta2, opt.eps)), opt.decoupled)
        else:
            adam = (False, theta, theta, self.wd, self.wd, self.wd, self.wd, False)
        return (*adam, st.orthograd, dt(1e-30), st.fixed_norm,
                np.ascontiguousarray(st.target_norm.numpy()))

    @staticmethod
    def _stats_args(st) -> tuple:
        """mse_chunk's arguments for the statistics: the MSE divisor, the test set, scratch."""
        from grokfast.kernels.cpu.loop_stats import COLUMNS

        t, c, p = st.nb_test, st.config, st.p
        dt = st.nb["theta"].dtype.type
        n_test = t["i0"].shape[0]
        mean = c.loss_reduction == "mean"
        test = (t["i0"], t["i1"], st.test_labels.numpy().astype(np.int64),
                dt(n_test * p if mean else 1), t["Z"], t["H"], t["logits"])
        scratch = np.empty((1, max(st.S, st.N * p, n_test * p)), st.nb["theta"].dtype)
        return (dt(st.N * p if mean else 1), test, np.empty((2, st.S), scratch.dtype), scratch,
                np.empty(1, scratch.dtype), np.array([STAT_INDEX[n] for n in COLUMNS], np.int64))

    def run(self, st, step0: int, n_steps: int, sched, rows: list) -> None:
        """Steps step0 … step0+n_steps−1 of `st` (sched: the optimizer's per-step scalars), in
        native calls of about PIECE_SECONDS each (between them Python handles signals: a second
        Ctrl-C breaks into a long chunk within a fraction of a second); the statistics rows
        [n_stats, M] of logged steps are appended to `rows`; st.offset counts the steps done, as
        TorchStepper._step does."""
        k = 0
        while k < n_steps:
            n = min(n_steps - k, self.piece)
            t0 = time.perf_counter()
            self._call(st, step0 + k, n, sched[k:k + n], rows)
            self.piece = max(1, int(n * PIECE_SECONDS / max(time.perf_counter() - t0, 1e-6)))
            k += n

    def _call(self, st, step0: int, n_steps: int, sched, rows: list) -> None:
        """One native call of steps step0 … step0+n_steps−1 (run)."""
        c = st.config
        n_rows = len(range(-(-step0 // c.log_every) * c.log_every, step0 + n_steps,
                           c.log_every))
        table = np.full((n_rows, len(STAT_NAMES), st.M), np.nan)
        done = np.zeros(1, np.int64)
        try:
            self.kernel.mse_chunk(st.stepping, st.nb["theta"], st.nb["grad"], *self.args,
                                  self._neg_lr(sched, 0, n_steps), self.wd, *self.sgd,
                                  self.opt.steps_taken + st.offset, self.buf, *self.buffers,
                                  step0, c.log_every, c.eval_every, st.P, *self.stats, table,
                                  self._filter_args(st), self.loss, self._opt(sched, n_steps),
                                  done)
        finally:  # a Ctrl-C surfacing right after the call: the steps ran, count them
            st.offset += int(done[0])
            if self.ring is not None:      # the MA ring advanced one slot per step
                self.ring.ring_pos = (self.ring.ring_pos + int(done[0])) % self.ring.window
        stats = torch.from_numpy(table).permute(1, 0, 2)          # [n_stats, n_rows, M]
        finish_before(stats, st.dtype)
        finish_after(stats, st.dtype)
        rows.extend(torch.from_numpy(table))

    def _opt(self, sched, n_steps: int) -> tuple:
        """mse_chunk's `opt` for steps 0 … n_steps−1 of `sched`."""
        adam, *state = self.opt_args
        if adam:
            tables = (self._neg_lr(sched, 0, n_steps, 1), self._neg_lr(sched, 0, n_steps, 2))
        else:
            lr = self._neg_lr(sched, 0, n_steps)
            tables = (lr, lr)
        return (adam, *tables, *state)

    @staticmethod
    def _neg_lr(sched, k: int, end: int, j: int = 0) -> np.ndarray:
        """Scalar j of the optimizer's schedule (0: −lr, or Adam's −lr/(1 − β1ᵗ)) for steps
        k … end−1 of the chunk: [end − k, M] in the working dtype."""
        if isinstance(sched, Schedule):
            return np.ascontiguousarray(sched.table[k:end, j, :, 0].numpy())
        first = sched.value[j].numpy()[:, 0]                     # a Constant
        return np.ascontiguousarray(np.broadcast_to(first, (end - k, first.shape[0])))


def _loss_args(st) -> tuple:
    """mse_chunk's `loss` for TorchStepper `st`: loss.loss_args' tuple with scratch for the
    training and the test set, or an MSE tuple (its arrays unused, of the working dtype)."""
    from grokfast.kernels.cpu.loop_loss import MSE

    c, lg = st.config, st.loss_grad
    if c.loss != "mse":
        n = max(st.N, st.nb_test["i0"].shape[0])
        return loss_args(c, st.N, st.p, lg.row_grad.dtype, rows=n)
    zero = st.nb["zero"]
    empty = np.empty((2, 1, 1), zero.dtype)
    return (MSE, False, zero, zero, zero, empty[0], empty, empty[0, 0])


def _per_model(x: torch.Tensor) -> np.ndarray:
    """A [M, 1] per-model scalar tensor as a C-contiguous numpy [M]."""
    return np.ascontiguousarray(x.numpy()[:, 0])
