"""The torch backend's code paths, chosen by size: a pure function of the shapes, never of M where
M could change a bit (grokfast.torch_backend), and the aligned buffers every GEMM operand uses.

Means, chosen by measurement on the 2-core Xeon (Sapphire Rapids, AVX-512) of this project's CI,
torch 2.13 CPU, one thread, process CPU time per step (the box was shared: wall times were noisier;
bench/bench_cpu.py has the side-by-side table):
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
- Kernel: the numba forward / backward (kernels/cpu/grad.py) up to NUMBA_MAX_WORK per model-step,
  MKL's GEMMs above (torch_backend's docstring has the A/B).
- Threads over models (sharded.ShardedStepper): a launch of M ≥ 2·MIN_MODELS_PER_SHARD small
  models is cut into one contiguous shard per intra-op thread, or more where a shard would hold
  more than MAX_MODELS_PER_SHARD models; a pool of one thread per intra-op thread steps them.
  With numerics "portable" (the native chunk loop, no Python per step to share) every model
  counts: two or more small models already take one shard per thread.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional, Sequence

import torch

from grokfast.config import Config
from grokfast.errors import GrokfastError

DW1_METHODS = ("auto", "dense", "index_add")
FIRST_LAYER_METHODS = ("auto", "gather", "embedding_bag")
KERNELS = ("auto", "numba", "mkl")
# The numba forward/backward (kernels/cpu/grad.py) replaces the MKL GEMMs up to this much work per
# model-step, N·width·p multiply–adds per GEMM (paper-real: 8.3e4; gromov: 1.4e8, MKL's).
NUMBA_MAX_WORK = 2_000_000
# Threads over models: a launch of small models is cut into contiguous shards of at least this
# many models, one per thread (see sharded.ShardedStepper).
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


class Paths(NamedTuple):
    """The code paths of one TorchStepper (see choose_paths)."""
    dw1: str            # "dense" (Xᵀ dZ GEMM) or "index_add" (fixed-order segmented sum)
    first_layer: str    # "gather" (index_select + add) or "embedding_bag"
    kernel: str         # "numba" (kernels/cpu/grad.py) or "mkl" (torch's GEMMs)
    threads: int        # intra-op threads while stepping


def choose_paths(M: int, N: int, d_in: int, width: int, p: int, device_type: str, *,
                 dw1: str = "auto", first_layer: str = "auto", kernel: str = "auto",
                 threads: Optional[int] = None, num_threads: int = 1,
                 numba_available: bool = True, portable: bool = False) -> Paths:
    """The paths for M models of N training rows, d_in inputs, width hidden units and p outputs on
    a `device_type` device; the "auto" / None arguments chosen by size, the others checked and
    kept. num_threads: the caller's intra-op threads (torch.get_num_threads()); numba_available:
    whether kernels/cpu/grad.py imports; portable: numerics "portable" (the numba kernels at every
    size, on one thread per shard of models). Only the first layer looks at M (both exact)."""
    for name, value, valid in (("dw1", dw1, DW1_METHODS),
                               ("first_layer", first_layer, FIRST_LAYER_METHODS),
                               ("kernel", kernel, KERNELS)):
        if value not in valid:
            choices = ", ".join(map(repr, valid))
            raise GrokfastError(f"{name}={value!r}: choose one of {choices}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise GrokfastError(f"threads={threads!r} must be a positive integer, or None for the "
                            f"size-based default")
    cpu = device_type == "cpu"
    if first_layer == "auto":  # both are exact, hence bitwise equal: M may decide
        first_layer = "gather" if M * N * width < SMALL_ACTIVATIONS else "embedding_bag"
    if threads is None:
        threads = 1 if N * width < SMALL_ACTIVATIONS else num_threads
    if dw1 == "auto":
        dw1 = "index_add" if d_in * N * width >= INDEX_ADD_MIN_WORK else "dense"
    if not cpu:
        dw1 = "dense"  # index_add_ accumulates with atomics off the CPU
    # the numba loops or MKL's GEMMs, chosen by per-model size only (never by M, so that a model
    # computes the same bits alone and in any batch)
    portable = portable and cpu
    if portable and kernel == "mkl":
        raise GrokfastError("kernel='mkl' is the host-tuned path: set numerics='host' to use it")
    if portable and not numba_available:
        raise GrokfastError("numerics='portable' needs the numba package: pip install numba (or "
                            "set numerics='host')")
    if kernel == "auto":
        small = N * width * p <= NUMBA_MAX_WORK
        kernel = "numba" if cpu and (small or portable) and numba_available else "mkl"
    if kernel == "numba" and not cpu:
        raise GrokfastError("kernel='numba' is the CPU path; on CUDA use the triton backend (or "
                            "kernel='mkl')")
    if kernel == "numba" and not numba_available:
        raise GrokfastError("kernel='numba' needs the numba package: pip install numba (or use "
                            "kernel='mkl')")
    return Paths(dw1, first_layer, kernel, threads)


def shard_count(configs: Sequence[Config], device, shards: Optional[int],
                threads: Optional[int]) -> int:
    """How many shards of models a launch is cut into: `shards` if given, else for small models
    on the CPU one shard per intra-op thread (≥ MIN_MODELS_PER_SHARD models each, ≥ 1 with
    portable numerics) or more, so that none holds more than MAX_MODELS_PER_SHARD; else 1."""
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
        # large models, portable: threads over models, one shard each; a lone model gets them
        # all (its stepper splits each product over the threads: split.CoreSplit)
        return min(M, torch.get_num_threads()) if c.numerics == "portable" else 1
    per_shard = 1 if c.numerics == "portable" else MIN_MODELS_PER_SHARD   # native loop: 1
    return max(1, min(torch.get_num_threads(), M // per_shard), -(-M // MAX_MODELS_PER_SHARD))


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


def aligned_rows(d_in: int, width: int, p: int, dtype: torch.dtype) -> int:
    """Rows of width elements per model in θ: d_in of W1, p of W2 (seen as [p, width]), then zero
    rows until a model's row is a multiple of ALIGN_BYTES."""
    rows, es = d_in + p, torch.empty((), dtype=dtype).element_size()
    while (rows * width * es) % ALIGN_BYTES:
        rows += 1
    return rows


@contextlib.contextmanager
def intra_op_threads(threads: int, device: torch.device):
    """torch's intra-op threads set to `threads` on the CPU for the block, the caller's restored."""
    if device.type != "cpu" or torch.get_num_threads() == threads:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def mm_per_model(A: torch.Tensor, B: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    """out[m] = A[m] B[m], one (multi-threaded) mm per model: the GEMM of a stepper with more than
    one thread, where a threaded bmm would run one thread per GEMM and a lone model multi-threaded
    (other bits)."""
    for m in range(A.shape[0]):
        torch.mm(A[m], B[m], out=out[m])
    return out
