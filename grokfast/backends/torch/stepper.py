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

Code paths (threads, first layer, dW1 reduction, numba or MKL kernel) are chosen by size in
grokfast.backends.torch.paths (choose_paths); a launch of many small models is cut into shards
(sharded.py, built by grokfast.backends.torch.make_stepper). The measurements behind each choice:
bench/RESULTS.md, "Why the torch backend is built as it is".

Numerics (issue 17). With config.numerics "portable" (the default) on the CPU, models of every size
take the numba kernels (every product-sum a chain of explicit FMAs in a written order,
kernels/cpu/fma.py; a model's forward, loss gradient and dZ in blocks of rows that stay in
cache, kernels/cpu/rows.py; with more than one thread a model's products are split over the
threads by independent outputs, split.CoreSplit, the same bits), the test logits too, every statistic and
loss sums in grokfast.numerics' written order, and the optimizers use unfused ops (optim.py): the
same bits on every x86-64 CPU, whatever ATen, MKL or numba dispatch to
(tests/backends/test_portability.py). "host" keeps the host-tuned paths.

Files. This one: TorchStepper's protocol (advance, state dict) and the step (the forward / backward
above on numba or MKL, then the update). buffers.py: its setup (the launch checked, the training set
as index tensors, the code paths, θ and the gradient initialised, every buffer a step writes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.errors import GrokfastError
from grokfast.model import STAT_NAMES, torch_dtype

from .buffers import StepperBuffers, _check
from .native import native_loop
from .paths import aligned_empty, aligned_rows, intra_op_threads
from .stats import STAT_INDEX, fixed_norm_, orthograd_, stats_after, stats_before


class TorchStepper(StepperBuffers):
    """The stepper contract (grokfast.backends.base) over M models at once: W1 [M, d_in, width],
    W2 [M, width, p].

    configs share base.SHARED_FIELDS; lr, weight_decay, momentum, nesterov, betas, eps,
    warmup_steps, filter_alpha, filter_lamb, filter_normalize_lr, seed, init, init_std,
    init_scale and grok_threshold may differ per model. The code paths are chosen by size
    (paths.choose_paths) and can be forced: dw1 "dense" (count-matrix GEMM) or "index_add"
    (fixed-order segmented sum); first_layer "gather" (index_select + add) or "embedding_bag";
    threads, the intra-op threads while stepping (default: 1 for small models, else
    torch.get_num_threads(); the caller's setting is restored afterwards); kernel "numba"
    (kernels/cpu/grad.py) or "mkl" (the GEMMs above); shards, how many shards of models threads
    step (default: shard_count; make_stepper builds a ShardedStepper when it is more than one);
    native False keeps every step on the per-step path (native.py: the chunk loop in one numba
    call, chosen where it covers the configs; `native` None then). The optimizer (optim.py) and
    the gradient filter (grad_filters.py) own their state; the stepper owns θ, the gradient, the
    forward / backward and the statistics. Its setup (_data, _parameters, _buffers) is
    StepperBuffers (buffers.py); here are the protocol and the step.
    """

    backend = "torch"

    def __init__(self, configs: Sequence[Config], data: Dataset, device, *, dw1: str = "auto",
                 first_layer: str = "auto", threads: Optional[int] = None, kernel: str = "auto",
                 native: bool = True):
        configs = list(configs)
        c = _check(configs, data)
        self.configs, self.config = configs, c
        self.device = torch.device(device)
        self.dtype = dt = torch_dtype(c)
        M, d_in, w, p = len(configs), c.d_in, c.width, c.p
        self.M, self.d_in, self.width, self.p = M, d_in, w, p
        # θ rows of width elements per model: d_in of W1, p of W2 (seen as [p, width]), then zero
        # rows up to the alignment (see the parameters below)
        self.rows = aligned_rows(d_in, w, p, dt)
        self.P, self.S = d_in * w + w * p, self.rows * w

        self._data(data, dw1, first_layer, kernel, threads)
        self._parameters(configs)
        self._buffers()
        # the native chunk loop (native.py) where it covers the configs and `native` allows it
        self.native = native_loop(self) if native else None

    # ------------------------------------------------------------------ protocol
    @property
    def n_models(self) -> int:
        return self.M

    @property
    def steps_taken(self) -> np.ndarray:
        """Optimizer steps per model (int64 [M])."""
        return self.opt.steps_taken

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
        recorded = range(-(-step0 // c.log_every) * c.log_every, step0 + n_steps, c.log_every)
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
            with intra_op_threads(self.threads, self.device), torch.no_grad():
                sched = self.opt.schedule(step0, n_steps)
                self.offset = 0                              # steps done in this chunk
                if self.native is not None:
                    self.native.run(self, step0, n_steps, sched, rows)
                else:
                    for k in range(n_steps):
                        s = step0 + k
                        rows.append(self._step(s, s % c.log_every == 0, sched[k]))
        finally:  # counters and frozen models stay true to θ even if a step is interrupted
            done, self.offset = self.offset, 0
            self.opt.finish(done)
            self.filter.finish(done)
            if snapshot is not None:
                self._restore(snapshot, done)
        table = [r for r in rows if r is not None]
        if table:
            values = torch.stack(table, dim=2).cpu().numpy()          # [n_stats, M, n_rows]
            for name, k in STAT_INDEX.items():
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
        """The layout of grokfast.stepper: parameters, optimizer and filter state, step counts
        (CPU copies), and the fixed-norm targets."""
        return {"backend": self.backend, "theta": self.theta[:, :self.P].cpu().clone(),
                "target_norm": self.target_norm.cpu().clone(), **self.opt.state_dict(self.P),
                **self.filter.state_dict(self.P)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != self.backend or tuple(state["theta"].shape) != (self.M, self.P):
            raise GrokfastError("this state was not saved by a torch-backend stepper of the same "
                                "models and shapes; resume with the backend and configs it was "
                                "saved with")
        self.theta[:, :self.P].copy_(state["theta"])
        self.target_norm.copy_(state["target_norm"])
        self.opt.load_state_dict(state, self.P)
        self.filter.load_state_dict(state, self.P)

    # ------------------------------------------------------------------ the step
    def _step(self, s: int, record: bool, sched) -> Optional[torch.Tensor]:
        """One full-batch update of every model; the statistics row [n_stats, M] if recorded."""
        W1, W2, G1, G2 = self.W1, self.W2, self.G1, self.G2
        if self.core is not None:
            self.core.step(self.stepping, self.nb, self.d_in * self.width, not self.relu,
                           self.row_loss, lambda: self.loss_grad(self.logits))
            return self._update(s, record, sched, self.logits)
        if self.row_loss is not None:       # portable: each model's rows in cached blocks
            nb = self.nb
            self.cpu_rows.step_models(
                self.stepping, nb["theta"], nb["i0"], nb["i1"], self.d_in * self.width,
                not self.relu, nb["zero"], nb["Z"], nb["H"], nb["logits"], *self.step_loss,
                nb["dlogits"], nb["w2t"], nb["g2t"], nb["dH"], nb["grad"], nb["order"],
                nb["starts"])
            return self._update(s, record, sched, self.logits)
        if self.cpu_grad is not None:
            nb, P1, quadratic = self.nb, self.d_in * self.width, not self.relu
            self._numba_forward(nb, nb["logits"])
            logits = self.logits
            self.loss_grad(logits)
            self.nb_kernels.backward(self.stepping, nb["order"], nb["starts"], P1, quadratic,
                                nb["dlogits"], nb["Z"], nb["H"], nb["w2t"], nb["g2t"], nb["dH"],
                                nb["grad"])
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
        dlogits = self.loss_grad(logits)                              # ∂L/∂Ŷ      [M, N, p]
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
            row = stats_before(self, s, logits)
            theta0 = self.theta.clone()
        # update: filters, ⊥Grad, optimizer, fixed norm (the reference's order)
        self.filter.apply(self.grad, self.offset)
        if self.orthograd:
            orthograd_(W1, G1, self.tmp, self.tmp2, fixed=self.portable)
            orthograd_(W2, G2, self.tmp, self.tmp2, fixed=self.portable)
        self.opt.step(self.theta, self.grad, sched, self.offset)
        if self.fixed_norm:
            fixed_norm_(self.theta, W1, W2, self.target_norm, self.tmp, self.portable)
        self.offset += 1
        if record:
            stats_after(self, row, theta0)
        return row

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

    def _numba_forward(self, nb: dict, logits: np.ndarray) -> None:
        """The numba forward of the stepping models on the samples of nb (self.nb: training,
        self.nb_test: test) into logits."""
        P1, quadratic, z = self.d_in * self.width, not self.relu, self.nb["zero"]
        args = (self.stepping, self.nb["theta"], nb["i0"], nb["i1"], P1, quadratic, z, nb["Z"],
                nb["H"], self.nb["w2t"])
        if self.portable:
            self.nb_kernels.forward_portable(*args, logits)
        else:
            self.cpu_grad.forward(*args, logits)

    def test_logits(self) -> torch.Tensor:
        """Logits of every model on the test samples: [M, n_test, p] (rows of models not
        stepping are stale): the portable numba forward, or on the host path the GEMMs (MKL) as
        before numerics existed."""
        if self.cpu_grad is None or not self.portable:
            return self.forward(self.test_bags)
        t, nb = self.nb_test, self.nb
        if self.cpu_rows is None:
            self._numba_forward(t, t["logits"])
            return torch.from_numpy(t["logits"])
        # Ŷ alone, by blocks of rows whose Z and H stay in a thread's scratch (rows.py)
        args = (self.stepping, nb["theta"], t["i0"], t["i1"], self.d_in * self.width,
                not self.relu, nb["zero"])
        if self.core is not None:
            self.core.forward_logits(*args, self.eval_scratch, t["logits"])
        else:
            self.cpu_rows.forward_logits(*args, *self.eval_scratch[0], t["logits"], 0,
                                         len(t["i0"]))
        return torch.from_numpy(t["logits"])

    def forward(self, bags: torch.Tensor) -> torch.Tensor:
        """Logits of every model on the samples of `bags` (see _bags): [M, n, p]."""
        Z = self._first_layer(bags)
        H = Z.relu_() if self.relu else Z.mul_(Z)
        out = aligned_empty(self.M, (H.shape[1], self.p), self.dtype, self.device)
        return self.mm(H, self.W2, out=out)

    # ------------------------------------------------------------------ housekeeping
    def _snapshot(self, frozen: np.ndarray) -> dict:
        """Copies of the state of the models that must not step (inactive ones)."""
        rows = torch.from_numpy(np.nonzero(frozen)[0]).to(self.device)
        return {"rows": rows, "frozen": frozen.copy(), "theta": self.theta.index_select(0, rows),
                "opt": self.opt.snapshot(rows), "filter": self.filter.snapshot(rows)}

    def _restore(self, snap: dict, n_steps: int) -> None:
        rows, frozen = snap["rows"], snap["frozen"]
        self.theta.index_copy_(0, rows, snap["theta"])
        self.opt.restore(snap["opt"], rows, frozen, n_steps)
        self.filter.restore(snap["filter"], rows, frozen, n_steps)
