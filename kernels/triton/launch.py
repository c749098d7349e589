"""What every Triton launcher shares on the host: KernelSpec (the compile-time choices of all of a
stepper's launches), State (the optimizer / filter buffers), tensor and precision checks that raise
KernelError (kernels/errors.py; the backend translates it), and the interpreter's scalar-index fix.
"""
import dataclasses
import os
from typing import NamedTuple

import torch

from ..errors import KernelError
from .common import CODES

MAX_BLOCK_P = 512
PRECISIONS = ("ieee", "tf32", "tf32x3")
FMA_IN_INTERPRETER = False  # tests: run _dot_fma (the GPU's fused float64 products) on the CPU
# KernelSpec's block sizes (the stepper's `blocks` may override them): the tiled regime's BLOCK_*
# constexprs and the fused program's warps
BLOCK_SIZES = ("rows_block_n", "rows_block_h", "block_r", "block_h", "block_hh", "block_e",
               "fused_block_n", "fused_block_h", "fused_warps")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """The compile-time choices of every launch of one stepper, shared by all its models: built once
    (grokfast.backends.triton.stepper builds it from the configuration; kernels never see a config), read by
    every launcher, which takes the sizes off its tensors. Names are checked against CODES and block
    sizes against the kernels' limits on construction (GrokfastError naming the fallback).

    Default block sizes: chosen by the register spills ptxas reports for sm_90 (p ≈ 100 and width
    512; paper-real) — untimed, no GPU was lent. Tests pass smaller blocks to exercise tiling.
    """
    dtype: torch.dtype = torch.float32   # working dtype of θ, gradients and state
    activation: str = "relu"
    loss: str = "mse"
    loss_f64: bool = False               # loss and dL/dŶ from float64 logits (a float32 model)
    loss_mean: bool = True               # loss_reduction "mean" (else "sum")
    grad_filter: str = "none"
    filter_window: int = 0               # MA: the window's length
    filter_mean: bool = True             # MA: the window's mean (else its sum)
    filter_warmup: bool = True           # MA: filter only once the window is full
    optimizer: str = "gd"
    orthograd: bool = False
    fixed_norm: bool = False
    precision: str = "ieee"              # tl.dot's float32 products (check_precision: the device)
    eval_every: int = 1
    log_every: int = 1
    rows_block_n: int = 32               # kernels/rows.py: samples per program (≥ 16)
    rows_block_h: int = 16               # kernels/rows.py: hidden slice of a product (≥ 16)
    block_r: int = 16                    # kernels/update.py (UpdatePlan): W1 rows of a tile
    block_h: int = 64                    # W1 columns of a tile
    block_hh: int = 8                    # W2 rows of a tile
    block_e: int = 1024                  # elements of a flat tile
    fused_block_n: int = 16              # kernels/fused.py: samples per chunk of a step (≥ 16)
    fused_block_h: int = 16              # kernels/fused.py: hidden slice of the forward product
    fused_warps: int = 8                 # warps of the fused kernel's program

    def __post_init__(self):
        for kind, names in CODES.items():
            if getattr(self, kind) not in names:
                launch_error(f"{kind}={getattr(self, kind)!r} has no kernel (known: "
                             f"{', '.join(names)})")
        if self.dtype not in (torch.float32, torch.float64):
            launch_error(f"dtype {self.dtype} is not supported (float32 or float64)")
        for name in BLOCK_SIZES:
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                launch_error(f"{name}={v} must be a power of two")
        small = {n: getattr(self, n) for n in ("rows_block_n", "rows_block_h", "fused_block_n",
                                                "fused_block_h") if getattr(self, n) < 16}
        if small:
            launch_error(f"{small}: tl.dot needs blocks of at least 16")

    def code(self, kind: str) -> int:
        """The CODES code of this spec's choice of kind ("activation", "loss", ...)."""
        return CODES[kind].index(getattr(self, kind))

    def switches(self, *names: str) -> dict:
        """The constexpr switches named (the kernels' parameter names), for a launch."""
        values = dict(ACT=self.code("activation"), LOSS=self.code("loss"), LOSS_F64=self.loss_f64,
                      FILTER=self.code("grad_filter"), FILTER_MEAN=self.filter_mean,
                      FILTER_WARMUP=self.filter_warmup, OPT=self.code("optimizer"),
                      ORTH=self.orthograd, FIXED=self.fixed_norm)
        return {k: values[k] for k in names}

    def uses(self, state: str) -> bool:
        """Whether the kernels read and write this State tensor (unused ones may be empty)."""
        adam = self.optimizer in ("adam", "adamw")
        return dict(ema=self.grad_filter == "ema", window=self.grad_filter == "ma",
                    buf=self.optimizer == "sgd", exp_avg=adam, exp_avg_sq=adam)[state]

    @property
    def window_slots(self) -> int:
        """The WINDOW argument: MA's ring length (1 when there is no ring)."""
        return max(self.filter_window, 1)

    def loss_div(self, n: int, p: int) -> int:
        """The divisor of Σℓ_i over n samples: n·p for mse's mean, n for the others, 1 for a sum."""
        return (n * p if self.loss == "mse" else n) if self.loss_mean else 1


class State(NamedTuple):
    """Optimizer and filter state of M models, [M, D] each (window [M, filter_window, D]); the
    tensors a spec does not use (KernelSpec.uses) may be empty."""
    ema: torch.Tensor
    window: torch.Tensor
    buf: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


def state_checks(spec: KernelSpec, state: State, M: int, D: int) -> dict:
    """check_tensors entries for the state tensors the spec uses."""
    return {name: (t, spec.dtype, (M, spec.filter_window, D) if name == "window" else (M, D))
            for name, t in state._asdict().items() if spec.uses(name)}


def fused_precision(precision: str, dtype: torch.dtype) -> str:
    """The fused kernel's PRECISION constexpr: "fma" for float64 compiled for a GPU (or forced in
    the interpreter by FMA_IN_INTERPRETER), else the configured precision."""
    if dtype == torch.float64 and (FMA_IN_INTERPRETER or not interpreting()):
        return "fma"
    return precision


def launch_error(msg: str):
    """Raise KernelError for an unsupported launch, naming the fallback backend."""
    raise KernelError(f"Triton engine: {msg}; use backend='torch' (or 'reference') for this "
                      f"configuration")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dot_block(n: int) -> int:
    """Block size for a tl.dot side of length n: a power of two, at least 16."""
    return max(16, next_pow2(n))


def check_tensors(**specs) -> None:
    """Each spec is name=(tensor, dtype, shape): contiguous, on one device; the first one holds the
    float32/float64 data that fixes the working dtype."""
    first = next(iter(specs.values()))[0]
    if isinstance(first, torch.Tensor) and first.dtype not in (torch.float32, torch.float64):
        launch_error(f"dtype {first.dtype} is not supported (float32 or float64)")
    device = None
    for name, (t, dtype, shape) in specs.items():
        if not isinstance(t, torch.Tensor):
            launch_error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            launch_error(f"{name} has dtype {t.dtype}, expected {dtype}")
        if tuple(t.shape) != tuple(shape):
            launch_error(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not t.is_contiguous():
            launch_error(f"{name} must be contiguous")
        if device is None:
            device = t.device
        elif t.device != device:
            launch_error(f"{name} is on {t.device}, the other tensors on {device}")
    if device is not None and device.type == "cpu" and not interpreting():
        launch_error("tensors are on the CPU but Triton runs on a GPU (set TRITON_INTERPRET=1 "
                     "before importing triton to use the slow CPU interpreter)")


def check_precision(precision: str, dtype: torch.dtype, device: torch.device) -> None:
    if precision not in PRECISIONS:
        launch_error(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision != "ieee" and dtype != torch.float32:
        launch_error(f"precision={precision!r} applies to float32 only (got {dtype})")
    if precision != "ieee" and device.type != "cuda":
        launch_error(f"precision={precision!r} needs a GPU: the CPU interpreter computes exact "
                     f"float32 products and cannot reproduce TF32")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter converts a runtime scalar (a 1-element array) to an int with
    int(array), an error on NumPy 2 ("only 0-dimensional arrays can be converted to Python scalars"),
    so `range(N)` over a kernel argument fails there; Triton 3.9 uses int(array.squeeze()). Install
    the 3.9 behaviour (same result) in any interpreter that has the hook. Interpreter only."""
    from triton.runtime import interpreter
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_grokfast_index", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._grokfast_index = True
    interpreter._patch_lang_tensor = patched


if interpreting():
    _interpreter_scalar_index()
