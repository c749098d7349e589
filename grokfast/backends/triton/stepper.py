"""The Triton backend: a stepper that runs a batch of models through the fused kernels of
grokfast.kernels, with every statistic computed on the device and read back once per advance().

One training step is 3–5 launches over all M models at once (grid: models × blocks):

    rows_fwd_bwd     forward, loss, dL/dŶ, dL/dZ and the block's share of ∇W2 per block of
                     samples; train/test loss partials
    update_grad      ∇W1 (fixed-order segmented sum of dL/dZ rows), ∇W2 (the shares summed in
                     block order), statistic partials, Grokfast filter, and the optimizer unless
                     ⊥Grad is on
    update_orth      ⊥Grad only: projection, then
    update_step      ⊥Grad's rescale and the optimizer
    update_rescale   fixed_norm only
    stats_row        the statistics row of the step into a [M, K, 17] device buffer; step += 1

Each kernel reads the step s from a device counter and per-model hyperparameters (lr, weight
decay, betas, momentum, filter α/λ, warmup, target norm) from a float64 device array, so models
with different hyperparameters share every launch, no launch argument changes from step to step,
and on CUDA the K launches of an advance() are captured once into a CUDA graph and replayed.
Parameters are double-buffered (θ_s is read from one buffer, θ_{s+1} written to the other).

Config → kernels: this module translates a Config batch into one kernels.triton.launch.KernelSpec (the
compile-time choices every launch shares, built once per stepper) and device tensors; kernels
know nothing of configs. Unsupported combinations raise GrokfastError naming backend="torch".
On a machine without CUDA it runs only under Triton's interpreter (TRITON_INTERPRET=1 set before
triton is first imported): exact but ~1e4× slower, meant for tests.

Numerics: float32 by default with IEEE dot products (precision="ieee"), agreeing with the
reference to ~1e-6 relative over tens of steps; "tf32"/"tf32x3" are opt-in on a GPU; float64
agrees to ~1e-14. The sums are reordered relative to torch (segmented gathers, per-tile partial
sums), so agreement is to tolerance, not bitwise; two runs of this backend are bitwise equal, and
model i of a batch is bitwise equal to the same model run alone.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.backends.base import check_batch
from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES, init_params, torch_dtype

MAX_P = 512
GRAPH_MIN_STEPS = 8


REGIMES = ("auto", "fused", "tiled")


def _kernels():
    """Import the kernel modules, or explain why the Triton backend cannot run here."""
    try:
        from grokfast.kernels.triton import fused, launch, rows, stats, update
    except ImportError as e:  # triton missing (e.g. macOS/Windows)
        raise GrokfastError(f"backend='triton' needs the triton package ({e}); use "
                            f"backend='torch'") from None
    return launch, fused, rows, update, stats


@contextlib.contextmanager
def kernel_errors():
    """A refused kernel launch (grokfast.kernels.errors.KernelError) as the package's GrokfastError."""
    from grokfast.kernels.errors import KernelError
    try:
        yield
    except KernelError as e:
        raise GrokfastError(str(e)) from None


def _translating(method):
    """method with kernel_errors() around it."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with kernel_errors():
            return method(*args, **kwargs)
    return wrapper


def check_supported(config: Config, device: torch.device) -> None:
    """GrokfastError, naming the fallback, for a configuration this backend cannot run here."""
    launch = _kernels()[0]
    if device.type == "cpu" and not launch.interpreting():
        raise GrokfastError("backend='triton' needs a CUDA GPU (device='cuda'); on the CPU use "
                            "backend='torch' (or set TRITON_INTERPRET=1 before importing grokfast "
                            "to run the kernels in Triton's slow interpreter)")
    if device.type not in ("cpu", "cuda"):
        raise GrokfastError(f"backend='triton' runs on CUDA devices, not {device.type!r}; use "
                            f"backend='torch'")
    if config.p > MAX_P:
        raise GrokfastError(f"backend='triton' supports p ≤ {MAX_P} (one block of outputs per "
                            f"program); p={config.p}: use backend='torch'")
    with kernel_errors():
        launch.check_precision(config.precision, torch_dtype(config), device)


def segment_table(index_train: torch.Tensor, d_in: int) -> torch.Tensor:
    """[d_in, maxdeg] int32: for each W1 row r, the training rows i that add W1[r], ascending, a row
    twice when both its symbols are r (X = 2·e_a); padded with −1. dW1[r] = Σ_k dZ[table[r, k]]."""
    uses = [[] for _ in range(d_in)]
    for i, (a, b) in enumerate(index_train.tolist()):
        uses[a].append(i)
        uses[b].append(i)
    width = max(1, max(len(u) for u in uses))
    table = torch.full((d_in, width), -1, dtype=torch.int32)
    for r, u in enumerate(uses):
        table[r, :len(u)] = torch.tensor(u, dtype=torch.int32)
    return table


def _hyperparameters(configs: Sequence[Config], target_norms, grad_scale: float) -> torch.Tensor:
    """hp [M, N_HP] float64 in the slot order of kernels/triton/common.py."""
    rows = []
    for c, target in zip(configs, target_norms):
        divide = c.filter_normalize_lr and c.grad_filter != "none"
        rows.append([c.lr, c.weight_decay, c.momentum, float(c.nesterov), c.betas[0], c.betas[1],
                     c.eps, c.filter_alpha, c.filter_lamb, float(c.warmup_steps), float(divide),
                     target, grad_scale])
    return torch.tensor(rows, dtype=torch.float64)


class TritonStepper:
    """The stepper contract (grokfast.stepper) over the fused Triton kernels; all models in every launch.

    regime: "fused" (one program per model runs whole steps, K steps per launch: small models),
    "tiled" (the 3–5 launches per step over blocks of samples and tiles of parameters), or "auto"
    (fused when the model fits one program). blocks: overrides of KernelSpec's block sizes
    (kernels.launch.BLOCK_SIZES; tests use small blocks to exercise tiling). cuda_graphs: on CUDA,
    capture the tiled regime's launches of an advance() once and replay them.
    """

    backend = "triton"

    @_translating
    def __init__(self, configs: Sequence[Config], data: Dataset, device, *,
                 regime: str = "auto", blocks: Optional[dict] = None, cuda_graphs: bool = True):

        self.configs = list(configs)
        if not self.configs:
            raise GrokfastError("TritonStepper needs at least one config")
        check_batch(self.configs)
        c = self.configs[0]
        self.device = device = torch.device(device)
        check_supported(c, device)
        launch, self._fused, self._rows, self._update, self._stats = _kernels()
        self._launch = launch
        if tuple(self._stats.STAT_COLUMNS) != tuple(STAT_NAMES):
            raise GrokfastError("kernels/stats.py and grokfast.model.STAT_NAMES disagree; "
                                "reinstall grokfast")
        unknown = set(blocks or {}) - set(launch.BLOCK_SIZES)
        if unknown:
            raise GrokfastError(f"unknown block sizes {sorted(unknown)}; known: "
                                f"{', '.join(launch.BLOCK_SIZES)}")
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        dt = self.dtype = torch_dtype(c)
        M, p, H, d_in = len(self.configs), c.p, c.width, c.d_in
        self.n_train, self.n_test = len(data.train_labels), len(data.test_labels)
        if regime not in REGIMES:
            raise GrokfastError(f"regime={regime!r}: choose one of {', '.join(REGIMES)}")
        fits = self._fused.fused_blocks(n_train=self.n_train, n_test=self.n_test, d_in=d_in,
                                        width=H, p=p) is not None
        if regime == "fused" and not fits:
            raise GrokfastError(f"regime='fused' needs a model that fits one program (n_train="
                                f"{self.n_train}, width={H}, p={p} does not); use regime='tiled'")
        self.regime = "fused" if regime == "fused" or (regime == "auto" and fits) else "tiled"
        self.spec = spec = launch.KernelSpec(
            dtype=dt, activation=c.activation, loss=c.loss,
            loss_f64=c.loss != "mse" and c.loss_dtype == "float64" and dt == torch.float32,
            loss_mean=c.loss_reduction == "mean", grad_filter=c.grad_filter,
            filter_window=c.filter_window, filter_mean=c.filter_type == "mean",
            filter_warmup=c.filter_warmup, optimizer=c.optimizer, orthograd=c.orthograd,
            fixed_norm=c.fixed_norm, precision=c.precision, eval_every=c.eval_every,
            log_every=c.log_every, **(blocks or {}))
        self.plan = self._update.UpdatePlan(spec, d_in=d_in, width=H, p=p)
        D = self.plan.D

        kw = dict(device=device)
        idx = torch.cat([data.index_train, data.index_test])       # [N + N_test, 2] rows of W1
        self.idx = idx.to(torch.int32).contiguous().to(**kw)
        self.labels = torch.cat([data.train_labels, data.test_labels]).to(torch.int32).to(**kw)
        self.table = segment_table(data.index_train, d_in).to(**kw)

        W1, W2 = zip(*(init_params(ci) for ci in self.configs))
        targets = [math.sqrt(float(a.double().pow(2).sum() + b.double().pow(2).sum()))
                   for a, b in zip(W1, W2)]
        self.theta = torch.empty(2, M, D, dtype=dt, **kw)
        self.theta[0] = torch.cat([torch.stack(W1).reshape(M, -1),
                                   torch.stack(W2).reshape(M, -1)], 1)
        self.theta[1] = self.theta[0]
        self.cur = 0

        ldt = torch.float64 if spec.loss_f64 else dt
        # autograd's grad / (n·p): mse averages over n·p outputs, the others over n
        grad_scale = float(torch.tensor(1.0, dtype=ldt) / spec.loss_div(self.n_train, p))
        self.hp = _hyperparameters(self.configs, targets, grad_scale).to(**kw)

        empty = torch.empty(0, dtype=dt, **kw)
        state = lambda used, *shape: torch.zeros(M, *shape, D, dtype=dt, **kw) if used else empty
        self.ema = state(spec.uses("ema"))
        self.window = state(spec.uses("window"), c.filter_window)
        self.buf = state(spec.uses("buf"))
        self.exp_avg = state(spec.uses("exp_avg"))
        self.exp_avg_sq = state(spec.uses("exp_avg_sq"))
        self.grad = state(c.orthograd or self.regime == "fused")  # fused: every step's ∇L
        if self.regime == "tiled":
            self._allocate_tiled(M, H, p, int(self._update.N_Q))

        self.step = torch.zeros(M, dtype=torch.int32, **kw)
        self.active = torch.ones(M, dtype=torch.int32, **kw)
        self._was_active = np.ones(M, dtype=bool)
        self._stats_buffers: dict[int, torch.Tensor] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._compiled = False

    # ---------------------------------------------------------------- protocol
    @property
    def n_models(self) -> int:
        return len(self.configs)

    @property
    def preferred_chunk(self) -> int:
        if self.device.type != "cuda":
            return 100
        return 10000 if self.regime == "fused" else 1000

    @_translating
    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict[str, np.ndarray]:
        """Run updates step0 … step0+n_steps−1 on the active models; statistics are read back once."""
        c = self.configs[0]
        active = np.asarray(active, dtype=bool)
        self._freeze(self._was_active & ~active)
        self._was_active = active.copy()
        self.active.copy_(torch.from_numpy(active.astype(np.int32)))
        self.step.fill_(step0)
        js = [j for j in range(n_steps) if (step0 + j) % c.log_every == 0]
        if self.regime == "fused":
            stats = self._stats_buffer(-(-n_steps // c.log_every))
            if n_steps:
                self._launch_fused(step0 + (-step0) % c.log_every, n_steps, stats)
            host = stats.cpu().numpy()[:, : len(js)]  # the one synchronization of the chunk
        else:
            stats = self._stats_buffer(n_steps)
            if n_steps:
                self._advance_tiled(n_steps, stats)
            host = stats.cpu().numpy()[:, js]
        out = {}
        for k, name in enumerate(STAT_NAMES):
            v = host[:, :, k].copy()
            v[~active] = np.nan
            out[name] = v
        out["step"][:] = np.asarray([step0 + j for j in js], dtype=np.float64)
        return out

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        W1, W2 = self._split(self.theta[self.cur])
        return W1.cpu().clone(), W2.cpu().clone()

    # optimizer / filter state: attribute → state-dict key (grokfast.stepper)
    _STATE_KEYS = (("buf", "momentum_buffer"), ("exp_avg", "exp_avg"),
                   ("exp_avg_sq", "exp_avg_sq"), ("ema", "ema"), ("window", "ma_window"))

    def state_dict(self) -> dict:
        """The layout of grokfast.stepper. The kernels keep the gradient of step s in window slot
        s % W and count steps per launch: every model is at the launch's step (the step counter's
        largest entry: the end of the last advance), and the window is rotated oldest first."""
        M, W = self.n_models, self.configs[0].filter_window
        s = int(self.step.max()) if M else 0
        W1, W2 = self.params()
        state = {"backend": self.backend,
                 "theta": torch.cat([W1.reshape(M, -1), W2.reshape(M, -1)], 1),
                 "steps_taken": np.full(M, s, dtype=np.int64)}
        for name, key in self._STATE_KEYS:
            t = getattr(self, name)
            if t.numel():
                state[key] = t.cpu().clone()
        if "ma_window" in state:
            state["ma_window"] = state["ma_window"].roll(-(s % W), dims=1)
        if self.configs[0].grad_filter != "none":
            state["filter_count"] = np.full(M, s, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict) -> None:
        M, W = self.n_models, self.configs[0].filter_window
        theta = state.get("theta")
        if (state.get("backend") != self.backend or theta is None
                or tuple(theta.shape) != (M, self.plan.D)):
            raise GrokfastError("this state was not saved by a triton-backend stepper of the same "
                                "models and shapes; resume with the backend and configs it was "
                                "saved with")
        s = int(np.max(state["steps_taken"])) if M else 0
        self.theta[0] = theta.to(self.theta)
        self.theta[1] = self.theta[0]
        self.step.fill_(s)
        for name, key in self._STATE_KEYS:
            t = getattr(self, name)
            if t.numel():
                if key not in state:
                    raise GrokfastError(f"the saved Triton state has no {key!r}: it was saved "
                                        f"for a different configuration")
                value = state[key]
                t.copy_(value.roll(s % W, dims=1) if key == "ma_window" else value)

    # ---------------------------------------------------------------- internals
    def _allocate_tiled(self, M: int, H: int, p: int, n_q: int) -> None:
        """Work buffers of the tiled regime (the fused one keeps everything in its program)."""
        c, kw = self.configs[0], dict(device=self.device)
        nb = -(-self.n_train // self.spec.rows_block_n)
        nbt = -(-self.n_test // self.spec.rows_block_n)
        f64 = dict(dtype=torch.float64, **kw)
        self.dz = torch.empty(M, self.n_train, H, dtype=self.dtype, **kw)
        self.dw2 = torch.empty(M, nb, H, p, dtype=self.dtype, **kw)   # per-block shares of ∇W2
        self.part_rows = torch.empty(M, nb + nbt, 3, **f64)
        self.part_g = torch.empty(M, self.plan.tg, n_q, **f64)
        self.part_o = torch.empty(M, self.plan.te, n_q, **f64) if c.orthograd else None
        self.part_s = torch.empty(M, self.plan.te, n_q, **f64) if c.orthograd else None
        self.part_n = torch.empty(M, self.plan.te, n_q, **f64) if c.fixed_norm else None

    def _state(self):
        """The optimizer and filter state as the launchers take it (these tensors, not copies)."""
        return self._launch.State(self.ema, self.window, self.buf, self.exp_avg, self.exp_avg_sq)

    def _split(self, flat: torch.Tensor):
        c, D1 = self.configs[0], self.plan.D1
        M = flat.shape[0]
        return flat[:, :D1].reshape(M, c.d_in, c.width), flat[:, D1:].reshape(M, c.width, c.p)

    def _freeze(self, newly_inactive: np.ndarray) -> None:
        """A model that stops keeps its θ in both buffers (no kernel touches it again)."""
        for i in np.nonzero(newly_inactive)[0]:
            self.theta[1 - self.cur, i] = self.theta[self.cur, i]

    def _stats_buffer(self, n_steps: int) -> torch.Tensor:
        if n_steps not in self._stats_buffers:
            self._stats_buffers[n_steps] = torch.full(
                (self.n_models, max(n_steps, 1), len(STAT_NAMES)), float("nan"),
                dtype=torch.float64, device=self.device)
        return self._stats_buffers[n_steps]

    def _advance_tiled(self, n_steps: int, stats: torch.Tensor) -> None:
        graph = self._graph(n_steps) if self._compiled and n_steps >= GRAPH_MIN_STEPS else None
        if graph is not None:
            graph.replay()
            self.cur ^= n_steps % 2
        else:
            for j in range(n_steps):
                self._launch_step(j, stats, check=j == 0)
            self._compiled = True

    def _launch_fused(self, first: int, n_steps: int, stats: torch.Tensor) -> None:
        """All n_steps in one launch, θ updated in place in buffer cur."""
        self._fused.fused_steps(
            self.spec, self.plan, self.theta[self.cur], self.grad, self.idx, self.labels,
            self._state(),
            self.hp, self.step, self.active, stats, n_train=self.n_train, n_steps=n_steps,
            first=first)

    def _graph(self, n_steps: int):
        """The CUDA graph of n_steps launches from the current buffer parity (captured once)."""
        if not self.cuda_graphs:
            return None
        key = (n_steps, self.cur)
        if key not in self._graphs:
            stats = self._stats_buffer(n_steps)
            cur = self.cur
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records only: nothing runs while capturing
                for j in range(n_steps):
                    self._launch_step(j, stats, check=False)
            self.cur = cur
            self._graphs[key] = graph
        return self._graphs[key]

    def _launch_step(self, j: int, stats: torch.Tensor, check: bool) -> None:
        """Enqueue the launches of one step (θ from buffer cur to 1 − cur), stats into row j."""
        spec, plan, update, state = self.spec, self.plan, self._update, self._state()
        theta, new = self.theta[self.cur], self.theta[1 - self.cur]
        self._rows.rows_fwd_bwd(spec, theta, self.idx, self.labels, self.dz, self.dw2,
                                self.part_rows, self.hp, self.step, self.active, check=check)
        update.update_grad(spec, plan, theta, new, self.grad, self.dz, self.dw2, self.table,
                           state, self.part_g, self.hp, self.step, self.active, check=check)
        last = self.part_g
        if spec.orthograd:
            update.update_orth(plan, theta, self.grad, self.part_g, self.part_o, self.active,
                               check=check)
            update.update_step(spec, plan, theta, new, self.grad, state, self.part_g,
                               self.part_o, self.part_s, self.hp, self.step, self.active,
                               check=check)
            last = self.part_s
        if spec.fixed_norm:
            update.update_rescale(spec, plan, theta, new, last, self.part_n, self.hp, self.active,
                                  check=check)
            last = self.part_n
        self._stats.stats_row(spec, plan, stats, j, self.part_rows, self.part_g, last, self.step,
                              self.active, n_train=self.n_train, n_test=self.n_test, check=check)
        self.cur ^= 1
