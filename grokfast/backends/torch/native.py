"""The native chunk loop of the torch backend: the steps between logged steps of a shard of small
models in one numba call (kernels/cpu/loop.py), for the configurations it covers.

TorchStepper.advance runs a chunk step by step in Python (forward and backward in numba, the loss
gradient, the optimizer and the statistics in between). Where `native_loop` returns a NativeLoop,
the stepper hands it the chunk instead: each run of unlogged steps (up to the next multiple of
log_every, or the chunk's end) is one call of kernels/cpu/loop.mse_chunk over the stepping
models; each logged step (and so each eval step, a multiple of log_every) runs on the per-step
path, which writes its statistics row and test metrics as always. The kernel calls the same @njit
stages as the per-step path, so θ, the gradient and every history row are bitwise those of the
per-step path (tests/backends/test_native_loop.py), whatever the chunk boundaries.

Covered: portable numerics on the CPU with the numba kernels on one thread per model (every small
model, alone or sharded), ReLU or x², MSE (mean or sum), GD and SGD with momentum and Nesterov,
with or without weight decay, warmup (the per-step −lr comes from the optimizer's schedule), float32 and float64, no gradient
filter, no ⊥Grad, no fixed norm. `why_not` names what sends a launch to the per-step path.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .optim import GD, SGD


def why_not(st) -> Optional[str]:
    """Why TorchStepper `st` cannot use the native loop (None: it can)."""
    c = st.config
    if st.cpu_grad is None or not st.portable:
        return "needs the numba kernels with numerics='portable' on the CPU"
    if st.nb_kernels is not st.cpu_grad:
        return "a model split over several threads (a large model) steps per step"
    if c.loss != "mse" or st.loss_grad.fused is None:
        return f"loss={c.loss!r} is on the per-step path (the native loop covers MSE)"
    if not ((type(st.opt) is GD and st.opt.gd_kernel is not None)
            or (type(st.opt) is SGD and not st.opt.fused)):
        return (f"optimizer={c.optimizer!r} is on the per-step path (the native loop covers GD "
                f"and SGD)")
    if c.grad_filter != "none":
        return f"grad_filter={c.grad_filter!r} is on the per-step path"
    if c.orthograd or c.fixed_norm:
        return "orthograd and fixed_norm are on the per-step path"
    return None


def native_loop(st) -> Optional["NativeLoop"]:
    """A NativeLoop for TorchStepper `st`, or None where why_not(st) gives a reason."""
    return NativeLoop(st) if why_not(st) is None else None


class NativeLoop:
    """Runs TorchStepper.advance's steps: logged ones on the per-step path, the rest natively."""

    def __init__(self, st):
        from grokfast.kernels.cpu import loop

        self.kernel, self.opt = loop, st.opt
        nb, opt = st.nb, st.opt
        _, labels, _, scale = st.loss_grad.fused
        self.wd = np.ascontiguousarray(opt.wd.numpy()[:, 0])
        self.args = (nb["i0"], nb["i1"], labels, st.d_in * st.width, not st.relu, nb["zero"],
                     scale)
        if type(opt) is SGD:   # torch.optim.SGD's launch-wide switches and per-model scalars
            self.sgd = (True, opt.any_wd, opt.use_momentum,
                        np.ascontiguousarray(opt.momentum.numpy()[:, 0]),
                        np.ascontiguousarray(opt.nesterov.numpy()[:, 0]))
            self.buf = opt.momentum_buffer.numpy()
        else:                  # GD: the SGD arguments unused (same types, one compiled kernel)
            self.sgd = (False, False, False, self.wd, np.zeros(st.M, dtype=np.bool_))
            self.buf = nb["theta"]
        self.buffers = (nb["Z"], nb["H"], nb["dH"], nb["w2t"], nb["g2t"], nb["ht"], nb["yt"],
                        nb["logits"], nb["dlogits"])

    def run(self, st, step0: int, n_steps: int, sched: list, rows: list) -> None:
        """Steps step0 … step0+n_steps−1 of `st` (sched: the optimizer's per-step scalars);
        the statistics rows of logged steps are appended to `rows`; st.offset counts the steps
        done, as TorchStepper._step does."""
        log_every = st.config.log_every
        k = 0
        while k < n_steps:
            s = step0 + k
            if s % log_every == 0:
                rows.append(st._step(s, True, sched[k]))
                k += 1
                continue
            end = min(n_steps, k + log_every - s % log_every)     # the next logged step
            neg_lr = self._neg_lr(sched, k, end)
            self.kernel.mse_chunk(st.stepping, st.nb["theta"], st.nb["grad"], *self.args, neg_lr,
                                  self.wd, *self.sgd, self.opt.steps_taken + st.offset,
                                  self.buf, *self.buffers)
            st.offset += end - k
            k = end

    @staticmethod
    def _neg_lr(sched: list, k: int, end: int) -> np.ndarray:
        """−lr of steps k … end−1 of the chunk: [end − k, M] in the working dtype."""
        first = sched[k][0].numpy()[:, 0]
        if all(sched[i] is sched[k] for i in range(k + 1, end)):  # a constant schedule
            return np.ascontiguousarray(np.broadcast_to(first, (end - k, first.shape[0])))
        return np.stack([sched[i][0].numpy()[:, 0] for i in range(k, end)])
