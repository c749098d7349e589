"""How TorchStepper (stepper.py) is built: the launch checked, the training set as index tensors and
the code paths for its size, θ and the gradient initialised per model, and every buffer a step
writes, allocated once.

Layout. θ and the gradient are flat [M, S] tensors with layer views W1 [M, d_in, width] and
W2 [M, width, p] (TorchStepper.split): each model's row holds its P = d_in·width + width·p
parameters, then zero rows of width elements up to a multiple of ALIGN_BYTES (paths.aligned_rows),
so that every model's block starts at the alignment a lone model's does; the activation buffers
the GEMMs read and write come from paths.aligned_empty for the same reason (stepper.py, "Batched =
separate"). On the numba path (kernels/cpu/grad.py) the kernels work on numpy views of plain
contiguous buffers instead (self.nb, self.nb_test: alignment plays no part there); a lone large
model in portable numerics runs them over the threads (split.CoreSplit). The optimizer (optim.py)
and the gradient filter (grad_filters.py) allocate and own their state over the same layout.
"""
from __future__ import annotations

import numpy as np
import torch

from grokfast.backends.base import check_batch
from grokfast.config import Config
from grokfast.data import Dataset
from grokfast.errors import GrokfastError
from grokfast.model import init_params

from .grad_filters import make_filter
from .loss import LossGrad
from .optim import make_optimizer
from .paths import aligned_empty, choose_paths, mm_per_model
from .split import CoreSplit
from .stats import target_norm


class StepperBuffers:
    """TorchStepper's construction, called from its __init__ in this order: _data (index tensors,
    code paths), _parameters (θ, the gradient), _buffers (activations, work buffers, the loss
    gradient, the optimizer, the filter; _numba_buffers on the numba path). It reads the shapes
    __init__ sets first (M, d_in, width, p, rows, S, config, configs, device, dtype) and uses
    TorchStepper._bags (stepper.py)."""

    def _data(self, data: Dataset, dw1: str, first_layer: str, kernel: str, threads) -> None:
        """The training set as index tensors, and the code paths for its size."""
        c, dev, dt, M = self.config, self.device, self.dtype, self.M
        d_in, w, p = self.d_in, self.width, self.p
        # data: the two W1 rows each sample adds, labels, one-hot targets
        idx = data.index_train.to(dev)
        self.N = N = idx.shape[0]
        self.i0, self.i1 = idx[:, 0].contiguous(), idx[:, 1].contiguous()
        self.i01 = torch.cat([self.i0, self.i1])                         # [2N]
        # Z = X W1 by embedding_bag over θ seen as [M·(d_in + p), width] rows (P is a multiple of
        # width); bag (a, b) of model m sums rows m·(d_in + p) + a and m·(d_in + p) + b
        self.bags = self._bags(idx)
        self.test_bags = self._bags(data.index_test.to(dev))
        numba = dev.type == "cpu" and _cpu_grad() is not None
        # numerics "portable": every reduction in a written order (grokfast.numerics)
        self.portable = c.numerics == "portable" and dev.type == "cpu"
        paths = choose_paths(M, N, d_in, w, p, dev.type, dw1=dw1, first_layer=first_layer,
                             kernel=kernel, threads=threads, num_threads=torch.get_num_threads(),
                             numba_available=numba, portable=self.portable)
        self.dw1, self.kernel, self.threads = paths.dw1, paths.kernel, paths.threads
        self.gather = paths.first_layer == "gather"
        self.cpu_grad = _cpu_grad() if self.kernel == "numba" else None
        self.labels = data.train_labels.to(dev)
        self.labels_M = self.labels.expand(M, N)
        self.test_labels = data.test_labels.to(dev)
        self.relu = c.activation == "relu"
        # σ = x² has σ' = 2x: the 2 is folded into the dW1 reduction (scaling by 2 is exact)
        self.dw1_alpha = 1.0 if self.relu else 2.0
        if self.dw1 == "dense":
            # Xᵀ [d_in, N] (entries 0, 1, 2): dW1 = Xᵀ dZ is the reference's own product
            X = data.inputs(data.train_pairs, dtype=dt).to(dev) * self.dw1_alpha
            self.Xt = X.T.expand(M, d_in, N)

    def _parameters(self, configs: list) -> None:
        """θ and the gradient (flat, aligned, with layer views), initialised per model."""
        dt, dev, M = self.dtype, self.device, self.M
        # parameters θ [M, S], the first P = d_in·width + width·p of each row used, and the
        # gradient, flat with layer views. The row stride S pads P with whole width-rows of zeros
        # to a multiple of ALIGN_BYTES, so that every model's block starts at the alignment a lone
        # model's does (see aligned_empty); the padding stays 0 under every update.
        self.theta = torch.zeros(M, self.S, dtype=dt, device=dev)
        self.grad = torch.zeros(M, self.S, dtype=dt, device=dev)
        self.W1, self.W2 = self.split(self.theta)
        self.G1, self.G2 = self.split(self.grad)
        targets = []
        for i, ci in enumerate(configs):
            W1, W2 = init_params(ci)
            self.W1[i].copy_(W1)
            self.W2[i].copy_(W2)
            # the reference's fixed-norm target: ‖θ_0‖ in float64 from the initial parameters
            targets.append(target_norm(W1, W2, self.portable))
        self.target_norm = torch.tensor(targets, dtype=torch.float64).to(dt).to(dev)  # [M]

    def _buffers(self) -> None:
        """Activations, work buffers, the loss gradient, the optimizer and the filter."""
        c, configs, dt, dev = self.config, self.configs, self.dtype, self.device
        M, N, w, p = self.M, self.N, self.width, self.p
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
        self.mm = torch.bmm if self.threads == 1 else mm_per_model
        self.orthograd, self.fixed_norm = c.orthograd, c.fixed_norm
        self.offset = 0                                                  # steps done in the chunk
        self.logits = aligned_empty(M, (N, p), dt, dev)
        self.dlogits = aligned_empty(M, (N, p), dt, dev)
        self.core = None
        if self.cpu_grad is not None:
            self._numba_buffers()
            # portable, more than one thread (a large model alone): every core on each model
            self.nb_kernels = self.cpu_grad
            if self.portable and self.threads > 1:
                # the kernels' own threads take the cores; torch's ops (elementwise, per-element
                # bits) run on one, so that its idle OpenMP workers never spin against them
                self.core = CoreSplit(self.cpu_grad, self.threads)
                self.nb_kernels, self.threads = self.core, 1
        self.loss_grad = LossGrad(c, self.labels, self.dlogits, self.portable)  # ∂L/∂Ŷ
        # portable on the CPU: the loss gradient by rows, between each block's forward and dZ
        # (kernels/cpu/rows.py; a lone large model: in the split forward's phase, CoreSplit.step),
        # MSE, cross-entropy or stablemax alike
        self.row_loss = self.cpu_rows = None
        if getattr(self.loss_grad, "fused", None) is not None and self.cpu_grad is not None:
            from grokfast.kernels.cpu import rows
            self.row_loss, self.cpu_rows = self.loss_grad.rows, rows
            self.step_loss = self.row_loss("step", min(rows.BLOCK, N))   # this thread's
            npdt = self.nb["zero"].dtype
            self.eval_scratch = [(np.empty((rows.BLOCK, w), npdt), np.empty((rows.BLOCK, w), npdt))
                                 for _ in range(self.core.threads if self.core else 1)]
        self.dH = aligned_empty(M, (N, w), dt, dev)
        self.tmp = torch.zeros(M, self.S, dtype=dt, device=dev)          # update scratch
        self.tmp2 = torch.zeros(M, self.S, dtype=dt, device=dev)
        self.opt = make_optimizer(configs, self.theta, self.tmp, self.tmp2)
        if self.core is not None and getattr(self.opt, "adam_kernel", None) is not None:
            self.opt.split = self.core        # a large model's Adam update over the threads too
        self.filter = make_filter(configs, self.grad, self.tmp)

    def _numba_buffers(self) -> None:
        """numpy views of contiguous buffers for kernels/cpu/grad.py (alignment plays no part)."""
        M, N, w, p, dt = self.M, self.N, self.width, self.p, self.dtype
        self.logits = torch.zeros(M, N, p, dtype=dt)   # rows of models not stepped stay
        self.dlogits = torch.zeros(M, N, p, dtype=dt)  # finite (see advance)
        self.stepping = np.arange(M, dtype=np.int64)
        npdt = self.theta.numpy().dtype
        n_test = self.test_bags.shape[0] // M
        self.nb_test = dict(i0=self.test_bags[:n_test, 0].numpy().copy(),
                            i1=self.test_bags[:n_test, 1].numpy().copy(),
                            Z=np.empty((M, n_test, w), npdt), H=np.empty((M, n_test, w), npdt),
                            logits=np.zeros((M, n_test, p), npdt))
        i0, i1 = self.i0.numpy(), self.i1.numpy()
        order, starts = self.cpu_grad.sample_order(i0, i1, self.d_in)   # ∇W1's sample order
        self.nb = dict(theta=self.theta.numpy(), grad=self.grad.numpy(), i0=i0, i1=i1,
                       order=order, starts=starts,
                       zero=np.zeros((), dtype=self.theta.numpy().dtype)[()],
                       Z=np.empty((M, N, w), self.theta.numpy().dtype),
                       logits=self.logits.numpy(), dlogits=self.dlogits.numpy())
        for name, shape in (("H", (M, N, w)), ("dH", (M, N, w)), ("w2t", (M, p, w)),
                            ("g2t", (M, p, w))):
            self.nb[name] = np.empty(shape, self.nb["Z"].dtype)


def _check(configs: list, data: Dataset) -> Config:
    """GrokfastError unless `configs` form one torch-backend launch over `data`; the first
    config."""
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
    return c


def _cpu_grad():
    """kernels/cpu/grad.py, or None where numba is not installed."""
    try:
        from grokfast.kernels.cpu import grad
    except ImportError:
        return None
    return grad
