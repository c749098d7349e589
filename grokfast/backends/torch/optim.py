"""The torch backend's optimizers: torch.optim's GD / SGD / Adam / AdamW single-tensor updates on M
models at once, each owning its [M, S] state, its step counts and their state dict.

θ, the gradient and every state share one flat layout, [M, S] (grokfast.torch_backend), so each
update is a few elementwise ops over all models and both layers. Per-model hyperparameters are
[M, 1] tensors in the working dtype, rounded from float64 as torch rounds Python scalars
(`a.add(b, alpha=x)` and `addcmul(a, b, x)` give the same bits); the per-step scalars (−lr, Adam's
bias corrections) come from `schedule`, computed in float64 as torch.optim computes them.

Numerics. torch's vectorized addcmul_, add_(alpha=), lerp_ fuse the multiply and the add (an FMA)
under its AVX2 / AVX-512 capabilities and not under its default one, so their bits depend on the
CPU. With numerics "portable" (the default) every update is written as separate mul / add / div /
sqrt ops (`fused` False); "host" keeps torch.optim's fused ops (bitwise torch.optim on one CPU).
mul / add / div are one IEEE rounding each. torch's CPU sqrt is not the correctly rounded one
(torch 2.13: 17 % of 10⁶ float32 and 1.2 % of float64 results one ulp off IEEE's), so portable
Adam / AdamW on the CPU runs as one numba pass instead (kernels/cpu/adam.py: the same operations
in the same order, `math.sqrt`: the sqrt instruction, correctly rounded), and its bias
correction √(1 − β2ᵗ) is Python's math.sqrt: its bits are fixed by the source, like the
products'. (The powers β1ᵗ, β2ᵗ of the schedule are Python's float `**`, the C library's pow, as
torch.optim computes them.) The schedule of a chunk is one table (Schedule), read whole by the
native chunk loop and step by step by the per-step path.

`ModelRows` is the common part of every component that keeps per-model state (these optimizers,
grokfast.grad_filters): the named state tensors, a per-model counter, copies of frozen models'
rows (snapshot / restore) and the state dict in the layout of grokfast.stepper.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.model import step_lr

from .split import cuts

# Parameters of a model from which its AdamW runs split over a CoreSplit's threads: below, one
# thread's pass is faster than the hand-off (Zen 4, bench/RESULTS.md: 90–134 µs alone against
# 200–230 split at 149 k parameters, even at 298 k, split ahead from 596 k)
SPLIT_ADAM_MIN = 1 << 19


def per_model(values, dtype: torch.dtype, device) -> torch.Tensor:
    """[M, 1] per-model scalars in `dtype`, rounded once from float64 (as torch's scalar args)."""
    return torch.tensor(values, dtype=torch.float64).to(dtype).to(device)[:, None]


def start_rows(state: torch.Tensor, grad: torch.Tensor, fresh: np.ndarray) -> None:
    """state[m] ← grad[m] for the models m whose state starts now (`fresh`)."""
    if not fresh.any():
        return
    if fresh.all():
        state.copy_(grad)
    else:
        rows = torch.from_numpy(np.nonzero(fresh)[0]).to(grad.device)
        state.index_copy_(0, rows, grad.index_select(0, rows))


class Schedule:
    """The per-step scalars of a chunk (GD.schedule): `table` [n, k, M, 1] in the working dtype;
    item s is step s's tuple of k [M, 1] tensors, made when asked (the native loop reads the
    table itself); a slice is the Schedule of those steps."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __len__(self) -> int:
        return self.table.shape[0]

    def __getitem__(self, s):
        if isinstance(s, slice):
            return Schedule(self.table[s])
        return tuple(self.table[s].unbind(0))


class Constant:
    """The per-step scalars of a chunk whose every step has the same tuple `value` (GD / SGD
    without warmup): n items, each `value`; a slice is the Constant of those steps. O(1) to
    make, slice and read, so a long chunk costs nothing per step here."""

    def __init__(self, value: tuple, n: int):
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s):
        if isinstance(s, slice):
            return Constant(self.value, len(range(self.n)[s]))
        if not -self.n <= s < self.n:
            raise IndexError(s)
        return self.value


class ModelRows:
    """Per-model state: tensors `names` ([M, S], models on dim `model_dim`) and the int64 [M]
    counter `counter` of calls per model, advanced once per chunk (`finish`)."""

    names: tuple = ()
    counter = "steps_taken"
    model_dim = 0

    def __init__(self, M: int):
        self.M = M
        setattr(self, self.counter, np.zeros(M, dtype=np.int64))

    def count(self) -> np.ndarray:
        return getattr(self, self.counter)

    def finish(self, done: int) -> None:
        """`done` steps of the chunk ran (every model; frozen ones are restored after)."""
        setattr(self, self.counter, self.count() + done)

    def snapshot(self, rows: torch.Tensor) -> dict:
        """Copies of the state of the models `rows` (those that must not step)."""
        snap = {name: getattr(self, name).index_select(self.model_dim, rows)
                for name in self.names}
        snap[self.counter] = self.count().copy()
        return snap

    def restore(self, snap: dict, rows: torch.Tensor, frozen: np.ndarray, n_steps: int) -> None:
        """Put back the snapshot of the frozen models after a chunk of n_steps."""
        for name in self.names:
            getattr(self, name).index_copy_(self.model_dim, rows, snap[name])
        self.count()[frozen] = snap[self.counter][frozen]

    def state_dict(self, P: int) -> dict:
        """CPU copies of the state, the first P entries of each model's row (grokfast.stepper)."""
        state = {name: getattr(self, name)[..., :P].cpu().clone() for name in self.names}
        state[self.counter] = self.count().copy()
        return state

    def load_state_dict(self, state: dict, P: int) -> None:
        for name in self.names:
            getattr(self, name)[..., :P].copy_(state[name])
        setattr(self, self.counter, np.array(state[self.counter], dtype=np.int64))


class GD(ModelRows):
    """Plain gradient descent (torch.optim.SGD without momentum): θ ← θ − lr·(g + wd·θ)."""

    adam = False

    def __init__(self, configs: Sequence[Config], theta: torch.Tensor, tmp: torch.Tensor,
                 tmp2: torch.Tensor):
        super().__init__(len(configs))
        dt, dev = theta.dtype, theta.device
        self.configs, self.dtype, self.device, self.tmp, self.tmp2 = configs, dt, dev, tmp, tmp2
        self.wd = per_model([ci.weight_decay for ci in configs], dt, dev)
        self.fused = configs[0].numerics == "host"
        # plain GD, portable, on the CPU: one numba pass (kernels/cpu/update.gd_step), the same
        # roundings as the separate ops
        self.gd_kernel = None
        if type(self) is GD and not self.fused and dev.type == "cpu" and theta.is_contiguous():
            from grokfast.kernels.cpu import update as cpu_update
            self.gd_kernel = cpu_update
        self.any_wd = any(ci.weight_decay != 0 for ci in configs)
        self._constant_schedule = None

    def step(self, theta: torch.Tensor, G: torch.Tensor, sched, offset: int) -> None:
        """One update of θ from the gradient G ([M, S]; G may be overwritten). `offset`: steps of
        the chunk done before this one."""
        (neg_lr,) = sched
        if self.gd_kernel is not None:
            self.gd_kernel.gd_step(theta.numpy(), G.numpy(), neg_lr.numpy()[:, 0],
                                   self.wd.numpy()[:, 0], theta.shape[1])
            return
        if self.any_wd:
            self._add_product(G, theta, self.wd)                    # g + wd·θ
        self._add_product(theta, self._direction(G, offset), neg_lr)

    def _add_product(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> None:
        """a ← a + b·x ([M, 1] x): one fused op (host) or a product then a sum (portable), in
        tmp2 (b may be tmp, never tmp2)."""
        if self.fused:
            a.addcmul_(b, x)
        else:
            a.add_(torch.mul(b, x, out=self.tmp2))

    def _direction(self, G: torch.Tensor, offset: int) -> torch.Tensor:
        return G

    def schedule(self, step0: int, n_steps: int):
        """Per-step [M, 1] scalars of the update, computed in float64 as torch.optim does and
        rounded once to the working dtype: (−lr,) or (−lr/(1 − β1ᵗ), √(1 − β2ᵗ), 1 − lr·wd);
        a Constant where every step has the same, else a Schedule."""
        if not self.adam and not any(ci.warmup_steps for ci in self.configs):
            if self._constant_schedule is None:
                lr = [[self._scalars(ci, 0, 0) for ci in self.configs]]   # [1, M, 1]
                self._constant_schedule = (torch.tensor(lr, dtype=torch.float64)
                                           .to(self.dtype).to(self.device)[0],)
            return Constant(self._constant_schedule, n_steps)
        # models with the same schedule parameters and step count share one computation
        groups: dict = {}
        for i, ci in enumerate(self.configs):
            key = (ci.lr, ci.warmup_steps, ci.filter_normalize_lr, ci.filter_lamb, ci.betas,
                   ci.weight_decay, int(self.steps_taken[i]))
            groups.setdefault(key, (ci, []))[1].append(i)
        values = np.empty((n_steps, 3 if self.adam else 1, self.M))
        for (*_, t0), (ci, members) in groups.items():
            group = [self._scalars(ci, step0 + k, t0 + k + 1) for k in range(n_steps)]
            values[:, :, members] = np.array(group)[:, :, None]
        return Schedule(torch.from_numpy(values).to(self.dtype).to(self.device)[..., None])

    def _scalars(self, c: Config, s: int, t: int) -> tuple:
        lr = step_lr(c, s)
        if not self.adam:
            return (-lr,)
        beta1, beta2 = c.betas
        step = float(t)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        # portable: IEEE's square root (math.sqrt); host: torch.optim's own `** 0.5`
        bc2_sqrt = bias_correction2 ** 0.5 if self.fused else math.sqrt(bias_correction2)
        return (-(lr / bias_correction1), bc2_sqrt, 1 - lr * c.weight_decay)


class SGD(GD):
    """torch.optim.SGD with momentum (buf ← m·buf + g, buf = g at the first step) and Nesterov
    (g + m·buf) per model; models with momentum 0 step as GD (their buffer is unused)."""

    names = ("momentum_buffer",)

    def __init__(self, configs: Sequence[Config], theta: torch.Tensor, tmp: torch.Tensor,
                 tmp2: torch.Tensor):
        super().__init__(configs, theta, tmp, tmp2)
        dt, dev = theta.dtype, theta.device
        self.momentum = per_model([ci.momentum for ci in configs], dt, dev)
        self.use_momentum = any(ci.momentum != 0 for ci in configs)
        self.nesterov = torch.tensor([ci.nesterov for ci in configs], device=dev)[:, None]
        self.any_nesterov = any(ci.nesterov for ci in configs)
        self.all_nesterov = all(ci.nesterov for ci in configs)
        self.momentum_buffer = torch.zeros_like(theta)

    def _direction(self, G: torch.Tensor, offset: int) -> torch.Tensor:
        if not self.use_momentum:
            return G
        buf = self.momentum_buffer
        buf.mul_(self.momentum).add_(G)
        start_rows(buf, G, self.steps_taken + offset == 0)          # first: buf = g
        if not self.any_nesterov:
            return buf
        if self.fused:
            nest = torch.addcmul(G, buf, self.momentum, out=self.tmp)   # g + m·buf
        else:
            nest = torch.mul(buf, self.momentum, out=self.tmp).add_(G)
        return nest if self.all_nesterov else torch.where(self.nesterov, nest, buf)


class Adam(GD):
    """torch.optim.Adam (weight decay added to the gradient) or, decoupled, AdamW."""

    adam = True
    names = ("exp_avg", "exp_avg_sq")

    def __init__(self, configs: Sequence[Config], theta: torch.Tensor, tmp: torch.Tensor,
                 tmp2: torch.Tensor):
        super().__init__(configs, theta, tmp, tmp2)
        dt, dev = theta.dtype, theta.device
        self.decoupled = configs[0].optimizer == "adamw"
        # portable on the CPU: one numba pass (kernels/cpu/adam.adam_step), IEEE's square root
        self.adam_kernel = None
        if not self.fused and dev.type == "cpu" and theta.is_contiguous():
            from grokfast.kernels.cpu import adam as cpu_adam
            self.adam_kernel = cpu_adam
        self.split = None        # a CoreSplit (a large model alone, set by the stepper), or None
        self.one_minus_beta1 = per_model([1 - ci.betas[0] for ci in configs], dt, dev)
        self.beta2 = per_model([ci.betas[1] for ci in configs], dt, dev)
        self.one_minus_beta2 = per_model([1 - ci.betas[1] for ci in configs], dt, dev)
        self.eps = per_model([ci.eps for ci in configs], dt, dev)
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)

    def step(self, theta: torch.Tensor, G: torch.Tensor, sched, offset: int) -> None:
        tmp = self.tmp
        neg_step_size, bc2_sqrt, decay = sched
        if self.adam_kernel is not None:
            rows = tuple(x.numpy() for x in (theta, G, self.exp_avg, self.exp_avg_sq))
            scalars = tuple(x.numpy()[:, 0] for x in (neg_step_size, bc2_sqrt, decay, self.wd,
                                                      self.one_minus_beta1, self.beta2,
                                                      self.one_minus_beta2, self.eps))
            if self.split is None or theta.shape[1] < SPLIT_ADAM_MIN:
                self.adam_kernel.adam_step(*rows, *scalars, self.decoupled, self.any_wd)
                return
            # a very large model alone: its row in element ranges over the CoreSplit's threads
            # (every element independent: the same bits for any cut)
            for m in range(theta.shape[0]):
                self.split.run([[(self.adam_kernel.adam_range,
                                  (*(x[m] for x in rows), a, b, *(x[m] for x in scalars),
                                   self.decoupled, self.any_wd))]
                                for a, b in cuts(theta.shape[1], self.split.threads, 64)])
            return
        if self.decoupled:
            theta.mul_(decay)                                           # θ·(1 − lr·wd)
        elif self.any_wd:
            self._add_product(G, theta, self.wd)
        if self.fused:
            self.exp_avg.lerp_(G, self.one_minus_beta1)
            self.exp_avg_sq.mul_(self.beta2).addcmul_(torch.mul(G, self.one_minus_beta2, out=tmp),
                                                      G)
        else:  # m + (g − m)·(1 − β1);  v·β2 + (g·(1 − β2))·g
            self.exp_avg.add_(torch.sub(G, self.exp_avg, out=tmp).mul_(self.one_minus_beta1))
            self.exp_avg_sq.mul_(self.beta2).add_(torch.mul(G, self.one_minus_beta2, out=tmp)
                                                  .mul_(G))
        denom = torch.sqrt(self.exp_avg_sq, out=tmp).div_(bc2_sqrt).add_(self.eps)
        step = torch.mul(self.exp_avg, neg_step_size, out=self.tmp2)
        if self.fused:
            theta.addcdiv_(step, denom)
        else:
            theta.add_(step.div_(denom))


def make_optimizer(configs: Sequence[Config], theta: torch.Tensor, tmp: torch.Tensor,
                   tmp2: torch.Tensor) -> GD:
    """The optimizer of a batch (configs share `optimizer`) over θ [M, S]; tmp, tmp2: [M, S]
    scratch it may overwrite."""
    cls = {"gd": GD, "sgd": SGD, "adam": Adam, "adamw": Adam}[configs[0].optimizer]
    return cls(list(configs), theta, tmp, tmp2)
