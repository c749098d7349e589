"""The `torch` backend: the fast CPU path, with the reference's math and hand-derived gradients.

No autograd and no torch.optim: one full-batch step of M models at once (leading model axis), in
place on preallocated buffers. θ is one flat [M, P] tensor, P = d_in·width + width·p, with layer
views W1 [M, d_in, width] and W2 [M, width, p]; the gradient and every optimizer / filter state
have the same layout, so each elementwise update is one op over all models and both layers. Per
step (N training rows):

    Z  = X W1 = W1[a] + W1[b]          [M, N, width]   a gather, not a GEMM
    H  = σ(Z);  Ŷ = H W2               [M, N, p]       GEMM 1
    dŶ = ∂L/∂Ŷ                         [M, N, p]       formed in autograd's operation order
    dW2 = Hᵀ dŶ;  dH = dŶ W2ᵀ                          GEMMs 2 and 3
    dZ = dH ⊙ σ'(Z);  dW1 = Xᵀ dZ       [M, d_in, width] a fixed-order segmented sum
    Grokfast EMA / MA → ⊥Grad → SGD / Adam / AdamW → fixed-norm rescale   (the reference's order)

Exactness. Z is bitwise the reference's dense X W1 (each entry is one rounding of a + b). dŶ, the
filters and the optimizers follow torch's own operation order with per-model scalars ([M, 1]
tensors rounded from float64 as torch rounds Python scalars; `a.add(b, alpha=x)` and
`addcmul(a, b, x)` give the same bits). dW1 is either Xᵀ dZ with the count matrix Xᵀ (entries
0, 1, 2; the reference's own product) or two `index_add_` calls, which on the CPU add the source
rows one after another in index order (torch documents index_add_ as nondeterministic on CUDA
only; off the CPU the dense product is used). Measured: float64 and float32 parameters after 50
steps are bitwise equal to the reference on every variant without ⊥Grad / fixed norm (those reduce
norms and dot products in two stages instead of torch.dot / norm: relative 1e-16 differences);
statistics agree to ~1e-14 relative.

Batched = separate (model m of a batch is bitwise model m run alone): every elementwise op used
gives the same bits in its vector body and scalar tail (measured for each op on this CPU; tests
check the end result), reductions go per model in two fixed stages (rows, then the row sums: a
one-stage full reduction splits across threads differently for M = 1, measured), and the GEMMs are
`bmm` with one thread (the same single-threaded GEMM per matrix whatever M) or, with more threads,
one multi-threaded `mm` per model (a threaded `bmm` runs its batch in parallel, one thread per GEMM,
but a lone model multi-threaded: measured different bits at K = 2823). MKL also picks its kernel by
the alignment of each matrix: every GEMM operand and output (θ, the gradient and the activation
buffers) therefore keeps each model's block at a 64-byte multiple (ALIGN_BYTES, aligned_empty), the
alignment a lone model gets. This needs no global MKL setting (MKL_CBWR), so it holds whoever
initialised MKL first; tests/test_batch_invariance.py checks it under forced MKL code paths.

Means, chosen by measurement on the 2-core Xeon (Sapphire Rapids, AVX-512) of this project's CI,
torch 2.13 CPU, one thread, process CPU time per step (the box was shared: wall times were noisier;
bench/bench_cpu.py has the side-by-side table):
- Plain eager ops, allocation-free (out= / in place): ~90 µs per paper-real step (p = 11, N = 59,
  width 128) against ~500 µs for the reference loop; ~13 ms per gromov step (p = 97, N = 2823,
  width 512; 7.8 ms of it the three GEMMs at ~107 GFLOP/s) against ~30 ms. torch.compile of the
  paper-real step took 30 s to compile and then ran 128 µs/step; unrolled over 10 steps, 24 s and
  71 µs/step: not worth ~25 s of compilation per variant and shape (the tests cover ~30 variants,
  and a user's first run would pay it). torch.jit.script is deprecated and still dispatches each op.
- Threads: one for small models (per-model activations under ATen's 32768-element grain): their
  ops never split anyway, and a two-thread MKL GEMM at paper-real size took 12 ms instead of 13 µs
  while the other core was busy. Larger models use torch.get_num_threads(), the user's setting;
  on a machine whose cores are busy with other work set torch.set_num_threads(1): with two threads
  a gromov step took 378 ms instead of 23 ms (wall) on the shared box (the reference: 598 vs 51).
- First layer: index_select + add while all models' activations are under the grain (10 µs vs
  14 µs for embedding_bag at paper-real); embedding_bag over θ seen as [M·(d_in + p), width] rows
  above it (0.49 ms vs 1.5 ms at gromov size; 44 vs 92 µs for 16 paper-real models). Both are
  exact, so the choice never changes a bit.
- dW1: the dense Xᵀ dZ GEMM below d_in·N·width = 2·10⁶ (8.8 µs vs 26 µs for index_add_ at
  paper-real), index_add_ above (0.8–1.3 ms vs 7.0 ms at gromov size, where the dense product would
  add 0.56 GFLOP to the three GEMMs' 0.84). A CSR sparse product was ~0.3–0.6 ms faster there but
  is a beta API without a documented order.
Statistics are computed only at recorded steps, from the same definitions as the reference
(model.STAT_NAMES; the losses by model.data_loss itself).

Many models (issue 12 of the tracker). Above, one model's step is ~40 ops of tiny GEMMs and
elementwise work, and a batch of small models gained little from the model axis: MKL's bmm of
[M, 59, 128] × [M, 128, 11] ran at ~26 GFLOP/s on one thread, and the second core sat idle
(threads = 1 for small models, see above). Two changes, both chosen so a model's bits never depend
on the batch:
- kernel "numba" (kernels/cpu_grad.py): forward and backward as numba loops over each model, every
  inner loop vectorized across the width, no GEMM library. Used where N·width·p ≤ NUMBA_MAX_WORK
  (paper-real 8.3e4), decided per model size, never by M. In an A/B of the forward + backward
  alone at 64 paper-real models (process CPU time, one thread, a loaded machine): 37.5 µs vs
  53.6 µs per model-step (float32) and 52.6 vs 85.1 (float64) for the MKL path. It sums in
  another order than MKL (the reference): per-step agreement is ~1e-7 (float32) / ~1e-16
  (float64) relative; kernel "mkl" keeps the GEMM path (and its near-bitwise agreement with the
  reference on one CPU).
- threads over models (ShardedStepper): a launch of M ≥ 2·MIN_MODELS_PER_SHARD small models is cut
  into one contiguous shard per intra-op thread (more where a shard would hold more than
  MAX_MODELS_PER_SHARD models), each a TorchStepper with one thread, stepped in a thread pool of
  one thread per intra-op thread (torch's ops and the numba kernels release the GIL).
bench/bench_many_models.py measures both against the torch.func.vmap loop (bench/RESULTS.md).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import numpy as np
import torch

from .config import Config
from .data import Dataset
from .errors import GrokfastError
from .model import (STAT_NAMES, accuracy, cosine, data_loss, init_params, min_margin, stablemax_s,
                    step_lr, torch_dtype)
from .stepper import check_batch

DW1_METHODS = ("auto", "dense", "index_add")
FIRST_LAYER_METHODS = ("auto", "gather", "embedding_bag")
KERNELS = ("auto", "numba", "mkl")
# The numba forward/backward (kernels/cpu_grad.py) replaces the MKL GEMMs up to this much work per
# model-step, N·width·p multiply–adds per GEMM (paper-real: 8.3e4; gromov: 1.4e8, MKL's).
NUMBA_MAX_WORK = 2_000_000
# Threads over models: a launch of small models is cut into contiguous shards of at least this
# many models, one per thread (see ShardedStepper).
MIN_MODELS_PER_SHARD = 8
# ... and of at most this many, more shards than threads where needed: a shard's activations and
# state then stay in cache across the steps of a chunk. Measured (one thread, paper-real, process
# CPU time per model-step): 256 models as one shard 30.0 µs, as 4 shards of 64 23.6 µs, as 8 of 32
# 24.9 µs; 64 models as one shard 23.9 µs.
MAX_MODELS_PER_SHARD = 64
# dW1 by index_add_ once d_in·N·width passes this (measured crossover, see the module docstring).
INDEX_ADD_MIN_WORK = 2_000_000
# ATen's parallel grain: per-model activations [N, width] below it make a "small" model (one
# intra-op thread); all models' activations below it take the gather + add first layer.
SMALL_ACTIVATIONS = 32768
# Every model's block of a GEMM operand or output starts at a multiple of this many bytes from
# the start of its buffer (whose allocation is itself 64-byte aligned), so each model's matrices sit
# at the alignment a lone model's do. MKL's GEMM kernels pick their code path (and with it the
# summation order) by the alignment of the matrices: measured on a 2-core AMD EPYC (AVX-512), a
# bmm of 4 models of [59, 128] × [128, 11] gave other bits for models 1 and 3 (output at an 8-byte
# offset) than for the same model alone, under MKL's AVX2 and AVX-512 code paths alike; with
# 64-byte aligned blocks, bmm (one thread) and per-model mm (two) matched bitwise at every size
# tried. No global MKL setting is needed, so it holds however torch was used before grokfast.
ALIGN_BYTES = 64
# Statistic names in the order of the rows collected per recorded step.
_STAT_INDEX = {name: k for k, name in enumerate(STAT_NAMES)}


class TorchStepper:
    """The stepper contract (grokfast.stepper) over M models at once: W1 [M, d_in, width], W2 [M, width, p].

    configs share stepper.SHARED_FIELDS; lr, weight_decay, momentum, nesterov, betas, eps,
    warmup_steps, filter_alpha, filter_lamb, filter_normalize_lr, seed, init, init_std,
    init_scale and grok_threshold may differ per model. The code paths are chosen by size (module
    docstring) and can be forced: dw1 "dense" (count-matrix GEMM) or "index_add" (fixed-order
    segmented sum); first_layer "gather" (index_select + add) or "embedding_bag"; threads, the
    intra-op threads while stepping (default: 1 for small models, else torch.get_num_threads();
    the caller's setting is restored afterwards); kernel "numba" (kernels/cpu_grad.py) or "mkl"
    (the GEMMs above); shards, how many shards of models threads step (default: shard_count; a
    launch cut into several shards is a ShardedStepper, which TorchStepper(...) then returns).
    """

    backend = "torch"

    def __new__(cls, configs: Sequence[Config], data: Dataset, device, *, shards=None, **kw):
        n = shard_count(list(configs), device, shards, kw.get("threads"))
        if n > 1:
            return ShardedStepper(list(configs), data, device, n, **kw)
        return super().__new__(cls)

    def __init__(self, configs: Sequence[Config], data: Dataset, device, *, dw1: str = "auto",
                 first_layer: str = "auto", threads: Optional[int] = None, kernel: str = "auto",
                 shards: Optional[int] = None):

        configs = list(configs)
        if not configs:
            raise GrokfastError("TorchStepper needs at least one config")
        check_batch(configs)
        c = configs[0]
        if c.precision != "ieee":
            raise GrokfastError(f"precision={c.precision!r} is a Triton-engine setting on a GPU; "
                                f"the torch backend computes in IEEE {c.dtype}: use "
                                f"precision='ieee', or backend='triton' with device='cuda'")
        if data.p != c.p or data.encoding != c.encoding or len(data.train_pairs) != c.n_train:
            raise GrokfastError("the dataset does not belong to this config: build it with "
                                "grokfast.make_dataset(config)")
        for name, value, valid in (("dw1", dw1, DW1_METHODS),
                                   ("first_layer", first_layer, FIRST_LAYER_METHODS),
                                   ("kernel", kernel, KERNELS)):
            if value not in valid:
                choices = ", ".join(map(repr, valid))
                raise GrokfastError(f"{name}={value!r}: choose one of {choices}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise GrokfastError(f"threads={threads!r} must be a positive integer, or None for the "
                                f"size-based default")
        self.configs = configs
        self.config = c
        self.device = dev = torch.device(device)
        self.dtype = dt = torch_dtype(c)
        M, d_in, w, p = len(configs), c.d_in, c.width, c.p
        self.M, self.d_in, self.width, self.p = M, d_in, w, p
        # θ rows of width elements per model: d_in of W1, p of W2 (seen as [p, width]), then
        # zero rows up to the alignment (see the parameters below)
        rows, es = d_in + p, torch.empty((), dtype=dt).element_size()
        while (rows * w * es) % ALIGN_BYTES:
            rows += 1
        self.rows, self.P, self.S = rows, d_in * w + w * p, rows * w

        # data: the two W1 rows each sample adds, labels, one-hot targets
        idx = data.index_train.to(dev)
        self.N = N = idx.shape[0]
        self.i0, self.i1 = idx[:, 0].contiguous(), idx[:, 1].contiguous()
        self.i01 = torch.cat([self.i0, self.i1])                         # [2N]
        # Z = X W1 by embedding_bag over θ seen as [M·(d_in + p), width] rows (P is a multiple of
        # width); bag (a, b) of model m sums rows m·(d_in + p) + a and m·(d_in + p) + b
        self.bags = self._bags(idx)
        self.test_bags = self._bags(data.index_test.to(dev))
        small = N * w < SMALL_ACTIVATIONS
        if first_layer == "auto":  # both are exact, hence bitwise equal: M may decide
            first_layer = "gather" if M * N * w < SMALL_ACTIVATIONS else "embedding_bag"
        self.gather = first_layer == "gather"
        if threads is None:
            threads = 1 if small else torch.get_num_threads()
        self.threads = threads
        self.labels = data.train_labels.to(dev)
        self.labels_M = self.labels.expand(M, N)
        self.test_labels = data.test_labels.to(dev)
        self.test_labels_M = self.test_labels.expand(M, -1)
        self.relu = c.activation == "relu"
        # σ = x² has σ' = 2x: the 2 is folded into the dW1 reduction (scaling by 2 is exact)
        dw1_factor = 1.0 if self.relu else 2.0
        if dw1 == "auto":
            dw1 = "index_add" if d_in * N * w >= INDEX_ADD_MIN_WORK else "dense"
        if dev.type != "cpu":
            dw1 = "dense"  # index_add_ accumulates with atomics off the CPU
        self.dw1 = dw1
        if dw1 == "dense":
            # Xᵀ [d_in, N] (entries 0, 1, 2): dW1 = Xᵀ dZ is the reference's own product
            X = data.inputs(data.train_pairs, dtype=dt).to(dev) * dw1_factor
            self.Xt = X.T.expand(M, d_in, N)
        self.dw1_alpha = dw1_factor
        # forward / backward: the numba loops or MKL's GEMMs, chosen by per-model size only (never
        # by M, so that a model computes the same bits alone and in any batch)
        self.cpu_grad = None
        if kernel == "auto":
            kernel = ("numba" if dev.type == "cpu" and N * w * p <= NUMBA_MAX_WORK
                      and _cpu_grad() is not None else "mkl")
        if kernel == "numba":
            if dev.type != "cpu":
                raise GrokfastError("kernel='numba' is the CPU path; on CUDA use the triton "
                                    "backend (or kernel='mkl')")
            self.cpu_grad = _cpu_grad()
            if self.cpu_grad is None:
                raise GrokfastError("kernel='numba' needs the numba package: pip install numba "
                                    "(or use kernel='mkl')")
        self.kernel = kernel

        # loss-gradient constants
        lt = torch.float64 if c.loss_dtype == "float64" and c.loss != "mse" else dt
        self.loss_torch_dtype = lt
        one = torch.ones((), dtype=lt, device=dev)
        if c.loss == "mse":
            # d/dŶ Σ(Ŷ − Y)²/(N·p) = (Ŷ − Y)·2·fl(1/(N·p)), as autograd forms it
            self.Y = torch.nn.functional.one_hot(self.labels, p).to(dt)
            self.mse_scale = (one / (N * p) if c.loss_reduction == "mean" else one) * 2
        else:
            g = one / N if c.loss_reduction == "mean" else one          # ∂L/∂(per-sample loss)
            self.row_grad = g
            self.onehot_g = torch.nn.functional.one_hot(self.labels, p).to(lt) * g

        # parameters θ [M, S], the first P = d_in·width + width·p of each row used, and the
        # gradient, flat with layer views. The row stride S pads P with whole width-rows of zeros
        # to a multiple of ALIGN_BYTES, so that every model's block starts at the alignment a lone
        # model's does (see aligned_empty); the padding stays 0 under every update.
        P1, P, S = d_in * w, self.P, self.S
        self.theta = torch.zeros(M, S, dtype=dt, device=dev)
        self.grad = torch.zeros(M, S, dtype=dt, device=dev)
        self.W1, self.W2 = self.split(self.theta)
        self.G1, self.G2 = self.split(self.grad)
        targets = []
        for i, ci in enumerate(configs):
            W1, W2 = init_params(ci)
            self.W1[i].copy_(W1)
            self.W2[i].copy_(W2)
            # the reference's fixed-norm target: ‖θ_0‖ in float64 from the initial parameters
            targets.append(math.sqrt(float(W1.double().pow(2).sum() + W2.double().pow(2).sum())))
        self.target_norm = torch.tensor(targets, dtype=torch.float64).to(dt).to(dev)  # [M]

        # activations and work buffers
        if self.gather:
            self.Z2 = torch.empty(M, 2 * N, w, dtype=dt, device=dev)     # W1[i0] | W1[i1]
            self.Z2a, self.Z2b = self.Z2[:, :N], self.Z2[:, N:]
        self.Z = aligned_empty(M, (N, w), dt, dev)                         # X W1
        if not self.relu:
            self.H = aligned_empty(M, (N, w), dt, dev)                     # σ(X W1) = Z²
        self.W2t = self.W2.transpose(1, 2)
        # GEMMs out[m] = A[m] B[m]. With one thread, bmm runs the same single-threaded GEMM per
        # matrix whatever M. With more, bmm runs its batch in parallel, one thread per GEMM, but a
        # lone model multi-threaded, which changes the bits: then one multi-threaded mm per model.
        self.mm = torch.bmm if self.threads == 1 else self._mm_per_model
        self.orthograd, self.fixed_norm = c.orthograd, c.fixed_norm
        self.offset = 0
        self.logits = aligned_empty(M, (N, p), dt, dev)
        self.dlogits = aligned_empty(M, (N, p), dt, dev)
        if self.cpu_grad is not None:
            # numpy views of contiguous buffers for kernels/cpu_grad.py (alignment plays no part)
            self.logits = torch.zeros(M, N, p, dtype=dt)   # rows of models not stepped stay
            self.dlogits = torch.zeros(M, N, p, dtype=dt)  # finite (see advance)
            self.stepping = np.arange(M, dtype=np.int64)
            self.nb = dict(theta=self.theta.numpy(), grad=self.grad.numpy(),
                           i0=self.i0.numpy(), i1=self.i1.numpy(),
                           zero=np.zeros((), dtype=self.theta.numpy().dtype)[()],
                           Z=np.empty((M, N, w), self.theta.numpy().dtype),
                           logits=self.logits.numpy(), dlogits=self.dlogits.numpy())
            for name, shape in (("H", (M, N, w)), ("dH", (M, N, w)), ("w2t", (M, p, w)),
                                ("g2t", (M, p, w))):
                self.nb[name] = np.empty(shape, self.nb["Z"].dtype)
        if lt != dt:
            self.z_loss = torch.empty(M, N, p, dtype=lt, device=dev)     # logits in float64
        self.dH = aligned_empty(M, (N, w), dt, dev)
        self.tmp = torch.zeros(M, S, dtype=dt, device=dev)               # update scratch
        self.tmp2 = torch.zeros(M, S, dtype=dt, device=dev)

        # per-model scalars, [M, 1] in the working dtype (Python floats round to it as torch's
        # scalar arguments do)
        def col(values):
            return torch.tensor(values, dtype=torch.float64).to(dt).to(dev)[:, None]

        self._col = col
        self.wd = col([ci.weight_decay for ci in configs])
        self.any_wd = any(ci.weight_decay != 0 for ci in configs)
        opt = c.optimizer
        self.optimizer = opt
        self.steps_taken = np.zeros(M, dtype=np.int64)        # optimizer steps per model
        if opt == "sgd":
            self.momentum = col([ci.momentum for ci in configs])
            self.use_momentum = any(ci.momentum != 0 for ci in configs)
            self.nesterov = torch.tensor([ci.nesterov for ci in configs], device=dev)[:, None]
            self.any_nesterov = any(ci.nesterov for ci in configs)
            self.all_nesterov = all(ci.nesterov for ci in configs)
            self.momentum_buffer = torch.zeros(M, S, dtype=dt, device=dev)
        elif opt in ("adam", "adamw"):
            self.one_minus_beta1 = col([1 - ci.betas[0] for ci in configs])
            self.beta2 = col([ci.betas[1] for ci in configs])
            self.one_minus_beta2 = col([1 - ci.betas[1] for ci in configs])
            self.eps = col([ci.eps for ci in configs])
            self.exp_avg = torch.zeros(M, S, dtype=dt, device=dev)
            self.exp_avg_sq = torch.zeros(M, S, dtype=dt, device=dev)
        self.grad_filter = c.grad_filter
        if c.grad_filter == "ema":
            self.filter_alpha = col([ci.filter_alpha for ci in configs])
            self.filter_one_minus_alpha = col([1 - ci.filter_alpha for ci in configs])
            self.filter_lamb = col([ci.filter_lamb for ci in configs])
            self.ema = torch.zeros(M, S, dtype=dt, device=dev)
            self.filter_count = np.zeros(M, dtype=np.int64)    # filter calls per model
        elif c.grad_filter == "ma":
            self.filter_lamb = col([ci.filter_lamb for ci in configs])
            self.window = c.filter_window
            # ring of the last `window` raw gradients; slot `ring_pos` holds the oldest. Unfilled
            # slots are 0, so summing all slots from the oldest equals the reference's sum.
            self.ring = torch.zeros(c.filter_window, M, S, dtype=dt, device=dev)
            self.ring_pos = 0
            self.filter_count = np.zeros(M, dtype=np.int64)
            self.ma_total = torch.zeros(M, S, dtype=dt, device=dev)
        self._constant_schedule = None

    # ------------------------------------------------------------------ protocol
    @property
    def n_models(self) -> int:
        return self.M

    @property
    def preferred_chunk(self) -> int:
        """About 0.5–1 s of work per chunk: 1000 steps for paper-real, fewer for width 512."""
        flops = 6 * self.N * self.width * self.p * self.M
        return int(min(1000, max(20, 2e9 // max(flops, 1))))

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict:
        """Run updates step0 … step0+n_steps−1 on the models where `active`; return the recorded
        rows (name → [M, n_rows]; NaN for inactive models, which are not stepped)."""
        c = self.config
        active = np.asarray(active, dtype=bool)
        recorded = [s for s in range(step0, step0 + n_steps) if s % c.log_every == 0]
        out = {k: np.full((self.M, len(recorded)), np.nan) for k in STAT_NAMES}
        out["step"][:] = np.asarray(recorded, dtype=np.float64)
        if not active.any() or n_steps <= 0:
            return out
        snapshot = self._snapshot(~active) if not active.all() else None
        # the numba kernels compute the active models only (an inactive model's update is
        # discarded by the snapshot anyway); the MKL path computes every model
        self.stepping = np.flatnonzero(active).astype(np.int64)
        rows = []
        try:
            with self._threads(), torch.no_grad():
                sched = self._schedule(step0, n_steps)
                self.offset = 0                              # steps done in this chunk
                for k in range(n_steps):
                    s = step0 + k
                    rows.append(self._step(s, s % c.log_every == 0, sched[k]))
        finally:  # counters and frozen models stay true to θ even if a step is interrupted
            done, self.offset = self.offset, 0
            self.steps_taken += done
            if self.grad_filter != "none":
                self.filter_count += done
            if snapshot is not None:
                self._restore(snapshot, done)
        table = [r for r in rows if r is not None]
        if table:
            values = torch.stack(table, dim=2).cpu().numpy()          # [n_stats, M, n_rows]
            for name, k in _STAT_INDEX.items():
                if name != "step":
                    out[name][active] = values[k][active]
        return out

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The W1-shaped [M, d_in, width] and W2-shaped [M, width, p] views of a flat [M, S]
        (or [M, P]) tensor (θ, the gradient, or an optimizer / filter state)."""
        P1 = self.d_in * self.width
        return (flat[:, :P1].view(self.M, self.d_in, -1),
                flat[:, P1:self.P].view(self.M, self.width, -1))

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W1.detach().cpu().clone(), self.W2.detach().cpu().clone()

    def state_dict(self) -> dict:
        """Parameters, optimizer and filter state, and the per-model step counts (CPU copies)."""
        state = {"backend": self.backend, "theta": self.theta[:, :self.P].cpu().clone(),
                 "steps_taken": self.steps_taken.copy(),
                 "target_norm": self.target_norm.cpu().clone()}
        for name in self._state_tensor_names():
            state[name] = getattr(self, name)[..., :self.P].cpu().clone()
        if self.grad_filter != "none":
            state["filter_count"] = self.filter_count.copy()
        if self.grad_filter == "ma":
            state["ring_pos"] = self.ring_pos
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != self.backend or tuple(state["theta"].shape) != (self.M, self.P):
            raise GrokfastError("this state was not saved by a torch-backend stepper of the same "
                                "models and shapes; resume with the backend and configs it was "
                                "saved with")
        self.theta[:, :self.P].copy_(state["theta"])
        self.target_norm.copy_(state["target_norm"])
        self.steps_taken = np.array(state["steps_taken"], dtype=np.int64)
        for name in self._state_tensor_names():
            getattr(self, name)[..., :self.P].copy_(state[name])
        if self.grad_filter != "none":
            self.filter_count = np.array(state["filter_count"], dtype=np.int64)
        if self.grad_filter == "ma":
            self.ring_pos = int(state["ring_pos"])

    # ------------------------------------------------------------------ the step
    def _step(self, s: int, record: bool, sched) -> Optional[torch.Tensor]:
        """One full-batch update of every model; the statistics row [n_stats, M] if recorded."""
        W1, W2, G1, G2 = self.W1, self.W2, self.G1, self.G2
        if self.cpu_grad is not None:
            nb, P1, quadratic = self.nb, self.d_in * self.width, not self.relu
            self.cpu_grad.forward(self.stepping, nb["theta"], nb["i0"], nb["i1"], P1, quadratic,
                                  nb["zero"], nb["Z"], nb["H"], nb["w2t"], nb["logits"])
            logits = self.logits
            self._loss_grad(logits)
            self.cpu_grad.backward(self.stepping, nb["i0"], nb["i1"], P1, quadratic,
                                   nb["dlogits"], nb["Z"], nb["H"], nb["w2t"], nb["g2t"],
                                   nb["dH"], nb["grad"])
            return self._update(s, record, sched, logits)
        # forward: Z = X W1 is a gather, W1[a] + W1[b] (bitwise the dense product: one rounding)
        if self.gather:
            torch.index_select(W1, 1, self.i01, out=self.Z2)
            Z = torch.add(self.Z2a, self.Z2b, out=self.Z)
        else:
            Z = self._first_layer(self.bags)
        if self.relu:
            H = Z.relu_()
        else:
            H = torch.mul(Z, Z, out=self.H)
        mm = self.mm
        logits = mm(H, W2, out=self.logits)                            # Ŷ = H W2   [M, N, p]
        # backward
        dlogits = self._loss_grad(logits)                              # ∂L/∂Ŷ      [M, N, p]
        mm(H.transpose(1, 2), dlogits, out=G2)                         # dW2 = Hᵀ dŶ
        dZ = mm(dlogits, self.W2t, out=self.dH)                        # dH = dŶ W2ᵀ [M, N, width]
        if self.relu:
            torch.ops.aten.threshold_backward.grad_input(dZ, H, 0, grad_input=dZ)  # ⊙ [Z > 0]
        else:
            dZ.mul_(Z)                                                 # ⊙ Z (the 2 is in dW1)
        if self.dw1 == "dense":
            mm(self.Xt, dZ, out=G1)                                    # dW1 = Xᵀ dZ
        else:
            # fixed-order segmented sum: rows in ascending order, position 0 then position 1
            G1.zero_()
            G1.index_add_(1, self.i0, dZ, alpha=self.dw1_alpha)
            G1.index_add_(1, self.i1, dZ, alpha=self.dw1_alpha)
        return self._update(s, record, sched, logits)

    def _update(self, s: int, record: bool, sched, logits) -> Optional[torch.Tensor]:
        """Statistics (when recorded) and the update of θ from the gradient in self.grad."""
        W1, W2, G1, G2 = self.W1, self.W2, self.G1, self.G2
        row = None
        if record:
            row = self._stats_before(s, logits)
            theta0 = self.theta.clone()
        # update: filters, ⊥Grad, optimizer, fixed norm (the reference's order)
        if self.grad_filter == "ema":
            self._ema()
        elif self.grad_filter == "ma":
            self._ma()
        if self.orthograd:
            self._orthograd(W1, G1)
            self._orthograd(W2, G2)
        self._optimizer_step(sched)
        if self.fixed_norm:
            norm = torch.sqrt(self._sumsq(W1) + self._sumsq(W2))          # [M]
            self.theta.mul_((torch.reciprocal(norm) * self.target_norm)[:, None])
        self.offset += 1
        if record:
            self._stats_after(row, theta0)
        return row

    def _mm_per_model(self, A: torch.Tensor, B: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        """out[m] = A[m] B[m], one multi-threaded mm per model (see `mm` in __init__)."""
        for m in range(self.M):
            torch.mm(A[m], B[m], out=out[m])
        return out

    def _loss_grad(self, logits: torch.Tensor) -> torch.Tensor:
        """∂L/∂Ŷ in the working dtype, formed as autograd forms it from the reference's loss."""
        c, out = self.config, self.dlogits
        if c.loss == "mse":
            return torch.sub(logits, self.Y, out=out).mul_(self.mse_scale)
        z = logits if self.loss_torch_dtype == self.dtype else self.z_loss.copy_(logits)
        if c.loss == "cross_entropy":
            # ∂/∂z (logsumexp(z) − z_c)·g = g·exp(z − lse) − g·e_c
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            dz = torch.sub(z, lse, out=out if z.dtype == out.dtype else None).exp_()
            dz.mul_(self.row_grad).sub_(self.onehot_g)
        else:
            # stablemax: L_i = log Σ_j s(z_j) − log s(z_c); ∂s/∂z = 1 (z ≥ 0), r² with r = 1/(1 − z)
            s = stablemax_s(z)
            ds = (self.row_grad / s.sum(-1, keepdim=True)).expand_as(s) - self.onehot_g / s
            r = torch.reciprocal(1 - torch.clamp(z, max=0))
            dz = torch.where(z < 0, ds * (r * r), ds)
        if dz is not out:
            out.copy_(dz)                                              # float64 → working dtype
        return out

    # ------------------------------------------------------------------ update pieces
    def _ema(self) -> None:
        """Grokfast EMA (filters.gradfilter_ema): μ ← μ·α + g·(1 − α), μ starting at g;
        g ← g + μ·λ."""
        G, ema = self.grad, self.ema
        self._start_rows(ema, self.filter_count + self.offset == 0)
        ema.mul_(self.filter_alpha).add_(torch.mul(G, self.filter_one_minus_alpha, out=self.tmp))
        G.add_(torch.mul(ema, self.filter_lamb, out=self.tmp))

    def _start_rows(self, state: torch.Tensor, fresh: np.ndarray) -> None:
        """state[m] ← g[m] for the models m whose state starts now (`fresh`)."""
        if not fresh.any():
            return
        if fresh.all():
            state.copy_(self.grad)
        else:
            rows = torch.from_numpy(np.nonzero(fresh)[0]).to(self.device)
            state.index_copy_(0, rows, self.grad.index_select(0, rows))

    def _ma(self) -> None:
        """Grokfast MA (filters.gradfilter_ma): push g; once the window is full (or always without
        warmup) g ← g + λ·(mean or sum of the window), summed left to right from the oldest."""
        c, W, G = self.config, self.window, self.grad
        self.ring[self.ring_pos].copy_(G)
        self.ring_pos = pos = (self.ring_pos + 1) % W
        count = np.minimum(self.filter_count + self.offset + 1, W)   # window length per model
        apply = count == W if c.filter_warmup else np.ones(self.M, bool)
        if not apply.any():
            return
        total = self.ma_total
        total.copy_(self.ring[pos])
        for j in range(1, W):
            total.add_(self.ring[(pos + j) % W])
        if c.filter_type == "mean":
            total.div_(self._col(count.astype(np.float64).tolist()))
        update = torch.mul(total, self.filter_lamb, out=self.tmp)
        if apply.all():
            G.add_(update)
        else:
            mask = torch.from_numpy(apply).to(self.device)[:, None]
            G.copy_(torch.where(mask, G + update, G))

    def _orthograd(self, W: torch.Tensor, G: torch.Tensor, eps: float = 1e-30) -> None:
        """⊥Grad on one layer, per model: g⊥ = g − (⟨w, g⟩/(⟨w, w⟩ + ε))·w, rescaled to ‖g‖."""
        g_orth = self._scratch(W, self.tmp2)
        proj = self._dot(W, G) / (self._sumsq(W) + eps)                   # [M]
        torch.mul(W, proj[:, None, None], out=g_orth)
        torch.sub(G, g_orth, out=g_orth)
        scale = torch.sqrt(self._sumsq(G)) / (torch.sqrt(self._sumsq(g_orth)) + eps)
        torch.mul(g_orth, scale[:, None, None], out=G)

    def _optimizer_step(self, sched) -> None:
        """torch.optim's SGD / Adam / AdamW single-tensor updates on the flat θ with per-model
        scalars."""
        theta, G, tmp = self.theta, self.grad, self.tmp
        if self.optimizer in ("gd", "sgd"):
            (neg_lr,) = sched
            if self.any_wd:
                G.addcmul_(theta, self.wd)                              # g + wd·θ
            step_dir = G
            if self.optimizer == "sgd" and self.use_momentum:
                buf = self.momentum_buffer
                buf.mul_(self.momentum).add_(G)
                self._start_rows(buf, self.steps_taken + self.offset == 0)  # first: buf = g
                if self.any_nesterov:
                    nest = torch.addcmul(G, buf, self.momentum, out=tmp)  # g + m·buf
                    step_dir = nest if self.all_nesterov else torch.where(self.nesterov, nest, buf)
                else:
                    step_dir = buf
            theta.addcmul_(step_dir, neg_lr)
            return
        neg_step_size, bc2_sqrt, decay = sched
        if self.optimizer == "adamw":
            theta.mul_(decay)                                           # θ·(1 − lr·wd)
        elif self.any_wd:
            G.addcmul_(theta, self.wd)
        self.exp_avg.lerp_(G, self.one_minus_beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(torch.mul(G, self.one_minus_beta2, out=tmp), G)
        denom = torch.sqrt(self.exp_avg_sq, out=tmp).div_(bc2_sqrt).add_(self.eps)
        theta.addcdiv_(torch.mul(self.exp_avg, neg_step_size, out=self.tmp2), denom)

    # ------------------------------------------------------------------ reductions
    def _scratch(self, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """A view of `buf` ([M, P]) shaped like the layer view x."""
        return buf[:, : x[0].numel()].view(x.shape)

    def _sumsq(self, x: torch.Tensor) -> torch.Tensor:
        """Σ x² per model of a layer [M, R, C]; see _dot."""
        return self._dot(x, x)

    def _dot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """⟨x, y⟩ per model of layers [M, R, C], summed in two fixed stages (rows, then their sums).

        A one-stage full reduction splits across threads differently for M = 1 than for M > 1; the
        per-row stage keeps every model's summation order independent of the batch.
        """
        return torch.mul(x, y, out=self._scratch(x, self.tmp)).sum(-1).sum(-1)

    def _schedule(self, step0: int, n_steps: int) -> list:
        """Per-step [M, 1] scalars of the update, computed in float64 as torch.optim does and
        rounded once to the working dtype: (−lr,) or (−lr/(1 − β1ᵗ), √(1 − β2ᵗ), 1 − lr·wd)."""
        adam = self.optimizer in ("adam", "adamw")
        if not adam and not any(ci.warmup_steps for ci in self.configs):
            if self._constant_schedule is None:
                lr = [[self._scalars(ci, 0, 0, False) for ci in self.configs]]   # [1, M, 1]
                self._constant_schedule = (torch.tensor(lr, dtype=torch.float64)
                                           .to(self.dtype).to(self.device)[0],)
            return [self._constant_schedule] * n_steps
        # models with the same schedule parameters and step count share one computation
        groups: dict = {}
        for i, ci in enumerate(self.configs):
            key = (ci.lr, ci.warmup_steps, ci.filter_normalize_lr, ci.filter_lamb, ci.betas,
                   ci.weight_decay, int(self.steps_taken[i]))
            groups.setdefault(key, (ci, []))[1].append(i)
        values = np.empty((n_steps, 3 if adam else 1, self.M))
        for (*_, t0), (ci, members) in groups.items():
            for k in range(n_steps):
                values[k][:, members] = np.asarray(self._scalars(ci, step0 + k, t0 + k + 1,
                                                                 adam))[:, None]
        table = torch.from_numpy(values).to(self.dtype).to(self.device)[..., None]  # [n, k, M, 1]
        return [tuple(row.unbind(0)) for row in table.unbind(0)]

    @staticmethod
    def _scalars(c: Config, s: int, t: int, adam: bool) -> tuple:
        lr = step_lr(c, s)
        if not adam:
            return (-lr,)
        beta1, beta2 = c.betas
        step = float(t)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        return (-(lr / bias_correction1), bias_correction2 ** 0.5, 1 - lr * c.weight_decay)

    # ------------------------------------------------------------------ statistics
    def _stats_before(self, s: int, logits: torch.Tensor) -> torch.Tensor:
        """Statistics at θ_s from the data-loss gradient (before filters): [n_stats, M] float64."""
        c, M = self.config, self.M
        W1, W2, G1, G2 = self.W1, self.W2, self.G1, self.G2
        row = torch.full((len(STAT_NAMES), M), float("nan"), dtype=torch.float64)
        n1, n2 = torch.sqrt(self._sumsq(W1)), torch.sqrt(self._sumsq(W2))
        gn1, gn2 = torch.sqrt(self._sumsq(G1)), torch.sqrt(self._sumsq(G2))
        dot1, dot2 = self._dot(G1, W1), self._dot(G2, W2)
        norm, gnorm = torch.sqrt(n1 * n1 + n2 * n2), torch.sqrt(gn1 * gn1 + gn2 * gn2)
        values = dict(
            step=torch.full((M,), float(s), dtype=torch.float64),
            train_loss=self._losses(logits, self.labels),
            train_acc=accuracy(logits, self.labels),
            norm_W1=n1, norm_W2=n2, norm=norm, grad_norm_W1=gn1, grad_norm_W2=gn2,
            grad_norm=gnorm, cos_grad_W1=cosine(dot1, gn1, n1), cos_grad_W2=cosine(dot2, gn2, n2),
            cos_grad=cosine(dot1 + dot2, gnorm, norm),
            min_margin=min_margin(logits, self.labels_M))
        if s % c.eval_every == 0:
            test_logits = self._forward(self.test_bags)
            values["test_loss"] = self._losses(test_logits, self.test_labels)
            values["test_acc"] = accuracy(test_logits, self.test_labels)
        for name, v in values.items():
            row[_STAT_INDEX[name]] = v.to(torch.float64).cpu()
        return row

    def _stats_after(self, row: torch.Tensor, theta0: torch.Tensor) -> None:
        """update_norm and cos_update of θ_{s+1} − θ_s, written into `row`."""
        d1, d2 = self.split(self.theta - theta0)
        t1, t2 = self.split(theta0)
        upd = torch.sqrt(self._sumsq(d1) + self._sumsq(d2))
        dot = -(self._dot(d1, t1) + self._dot(d2, t2))
        norm = row[_STAT_INDEX["norm"]].to(self.dtype)
        row[_STAT_INDEX["update_norm"]] = upd.to(torch.float64).cpu()
        row[_STAT_INDEX["cos_update"]] = cosine(dot, upd, norm).to(torch.float64).cpu()

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The data loss of each model (model.data_loss, the reference's definition): [M]."""
        return torch.stack([data_loss(logits[i], labels, self.configs[i]) for i in range(self.M)])

    def _bags(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of θ seen as [M·(d_in + p), width] (P is a multiple of width) that each sample of
        each model sums: [M·n, 2] for samples given by their W1 row indices [n, 2]."""
        offsets = torch.arange(self.M, device=index.device) * self.rows
        return (index[None] + offsets[:, None, None]).reshape(-1, 2)

    def _first_layer(self, bags: torch.Tensor) -> torch.Tensor:
        """Z = X W1 = W1[a] + W1[b] for every model and sample: [M, n, width] (aligned blocks)."""
        Z = torch.nn.functional.embedding_bag(bags, self.theta.view(-1, self.width), mode="sum")
        Z = Z.view(self.M, -1, self.width)
        out = self.Z if bags is self.bags else aligned_empty(self.M, Z.shape[1:], self.dtype,
                                                             self.device)
        return out.copy_(Z) if Z.stride(0) != out.stride(0) else Z

    def _forward(self, bags: torch.Tensor) -> torch.Tensor:
        """Logits of every model on the samples of `bags` (see _bags): [M, n, p]."""
        Z = self._first_layer(bags)
        H = Z.relu_() if self.relu else Z.mul_(Z)
        out = aligned_empty(self.M, (H.shape[1], self.p), self.dtype, self.device)
        return self.mm(H, self.W2, out=out)

    # ------------------------------------------------------------------ housekeeping
    @contextlib.contextmanager
    def _threads(self):
        if self.device.type != "cpu" or torch.get_num_threads() == self.threads:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def _state_tensor_names(self) -> list[str]:
        names = []
        if self.optimizer == "sgd":
            names.append("momentum_buffer")
        elif self.optimizer in ("adam", "adamw"):
            names += ["exp_avg", "exp_avg_sq"]
        if self.grad_filter == "ema":
            names.append("ema")
        elif self.grad_filter == "ma":
            names.append("ring")
        return names

    def _snapshot(self, frozen: np.ndarray) -> dict:
        """Copies of the state of the models that must not step (inactive ones)."""
        rows = torch.from_numpy(np.nonzero(frozen)[0]).to(self.device)
        snap = {"rows": rows, "frozen": frozen.copy(), "steps_taken": self.steps_taken.copy(),
                "theta": self.theta.index_select(0, rows)}
        for name in self._state_tensor_names():
            dim = 1 if name == "ring" else 0
            snap[name] = getattr(self, name).index_select(dim, rows)
        if self.grad_filter != "none":
            snap["filter_count"] = self.filter_count.copy()
        return snap

    def _restore(self, snap: dict, n_steps: int) -> None:
        rows, frozen = snap["rows"], snap["frozen"]
        self.theta.index_copy_(0, rows, snap["theta"])
        self.steps_taken[frozen] = snap["steps_taken"][frozen]
        for name in self._state_tensor_names():
            saved = snap[name]
            if name == "ring":
                # the ring advanced n_steps slots: rotate the frozen windows to keep their order
                self.ring.index_copy_(1, rows, saved.roll(n_steps % self.window, dims=0))
            else:
                getattr(self, name).index_copy_(0, rows, saved)
        if self.grad_filter != "none":
            self.filter_count[frozen] = snap["filter_count"][frozen]


def aligned_empty(M: int, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised [M, *shape] tensor whose model blocks start every multiple of ALIGN_BYTES
    (each block C-contiguous; the gaps between blocks are never read)."""
    shape = tuple(int(n) for n in shape)
    size = math.prod(shape)
    per = ALIGN_BYTES // torch.empty((), dtype=dtype).element_size()
    stride = -(-size // per) * per
    strides = tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))
    flat = torch.empty(M * stride, dtype=dtype, device=device)
    return flat.as_strided((M, *shape), (stride, *strides))


def _cpu_grad():
    """kernels/cpu_grad.py, or None where numba is not installed."""
    try:
        from .kernels import cpu_grad
    except ImportError:
        return None
    return cpu_grad


def shard_count(configs: Sequence[Config], device, shards: Optional[int],
                threads: Optional[int]) -> int:
    """How many shards of models a launch is cut into: `shards` if given, else for small models
    on the CPU one shard per intra-op thread (≥ MIN_MODELS_PER_SHARD models each) or more, so that
    none holds more than MAX_MODELS_PER_SHARD; else 1."""
    M = len(configs)
    if shards is not None:
        if not isinstance(shards, int) or not 1 <= shards <= max(M, 1):
            raise GrokfastError(f"shards={shards!r} must be an integer from 1 to the number of "
                                f"models ({M}), or None for the size-based default")
        return shards
    if not configs or torch.device(device).type != "cpu" or threads not in (None, 1):
        return 1
    c = configs[0]
    if c.n_train * c.width >= SMALL_ACTIVATIONS:
        return 1
    return max(1, min(torch.get_num_threads(), M // MIN_MODELS_PER_SHARD),
               -(-M // MAX_MODELS_PER_SHARD))


class ShardedStepper:
    """The torch backend over contiguous shards of the models, stepped by a pool of threads.

    For a launch of many small models: each shard is a TorchStepper (one intra-op thread, its own
    buffers) and all shards advance at once in a thread pool (torch ops and the numba kernels run
    without the GIL). A model's bits are those of the same model in any other batch, alone
    included (batch invariance), so sharding never changes a result. State dicts use the
    unsharded layout (MA windows stored oldest first), so a checkpoint resumes with any sharding.
    """

    backend = "torch"

    def __init__(self, configs: Sequence[Config], data: Dataset, device, n_shards: int, **kw):
        from concurrent.futures import ThreadPoolExecutor

        M = len(configs)
        self.bounds = [round(k * M / n_shards) for k in range(n_shards + 1)]
        self.shards = [TorchStepper(configs[a:b], data, device, shards=1, threads=1, **kw)
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
        from concurrent.futures import wait

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
            while not all(f.done() for f in futures):
                try:
                    wait(futures)
                except KeyboardInterrupt:
                    pass
            torch.set_num_threads(old)

    def _cut(self, x, dim: int = 0) -> list:
        return [x.narrow(dim, a, b - a) if torch.is_tensor(x) else x[a:b]
                for a, b in zip(self.bounds, self.bounds[1:])]

    def advance(self, step0: int, n_steps: int, active: np.ndarray) -> dict:
        parts = self._each(lambda sh, act: sh.advance(step0, n_steps, act),
                           self._cut(np.asarray(active, dtype=bool)))
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        W1s, W2s = zip(*(sh.params() for sh in self.shards))
        return torch.cat(W1s), torch.cat(W2s)

    def state_dict(self) -> dict:
        states = [sh.state_dict() for sh in self.shards]
        for st in states:
            if "ring_pos" in st:  # oldest first: a shard with no active model did not rotate
                st["ring"] = st["ring"].roll(-st["ring_pos"], dims=0)
                st["ring_pos"] = 0
        merged = {}
        for key, value in states[0].items():
            if torch.is_tensor(value):
                merged[key] = torch.cat([st[key] for st in states], dim=1 if key == "ring" else 0)
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
            part = {}
            for key, value in state.items():
                if torch.is_tensor(value) or isinstance(value, np.ndarray):
                    part[key] = self._cut(value, dim=1 if key == "ring" else 0)[k]
                else:
                    part[key] = value
            sh.load_state_dict(part)
