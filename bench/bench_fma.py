"""The portable kernels' physical limit: the rate of their FMA register tile, measured here.

    python bench/bench_fma.py                  # GFLOP/s on 1 thread and on torch's threads

kernels/cpu/fma.py's products are chains of fused multiply–adds in register tiles; the widest
float32 tile (6 rows × 16 columns: 12 vector FMAs a term) on operands that sit in L1 runs at the
rate of the machine's FMA units at the clock they really run (turbo included), which no product
of those kernels can beat. bench_native.py and bench_limit.py report their GEMM-shaped work as a
fraction of it, measured in the same run, beside the fraction of MKL's sgemm rate; padding lanes
(Ŷ's 11 columns of paper-real fill 11 of 16), short chains, loads from beyond L1 and the work
besides the products (first layer, ∇W1, update, statistics) are what keeps a step below it.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import torch
from numba import njit

from bench_cpu import _timed  # bench/ is on sys.path: run as a script or by pytest
from grokfast.kernels.cpu.fma import product

TILE_TERMS = 384          # each output's chain: a, b and out take 24 KB, in L1 on any x86-64


@njit(nogil=True)
def _fma_tiles(calls, a, b, out):
    for _ in range(calls):
        product(a, b, out, 0, 6, 0, 16)


def fma_limit(threads: int, seconds: float = 0.05) -> float:
    """Measured float32 GFLOP/s of the widest register tile (fma.product on a [TILE_TERMS, 6],
    b [TILE_TERMS, 16], out [6, 16]) on `threads` threads at once, each on its own arrays: best
    of 5 runs of about `seconds` (a busy machine only lowers it)."""
    rng = np.random.default_rng(0)
    arrays = [(rng.uniform(-1e-3, 1e-3, (TILE_TERMS, 6)).astype(np.float32),
               rng.uniform(-1e-3, 1e-3, (TILE_TERMS, 16)).astype(np.float32),
               np.zeros((6, 16), np.float32)) for _ in range(threads)]
    _fma_tiles(1, *arrays[0])                                      # compile
    per_call = _timed(lambda: _fma_tiles(1000, *arrays[0])) / 1000
    calls = max(1, int(seconds / max(per_call, 1e-9)))

    def run():
        pool = [threading.Thread(target=_fma_tiles, args=(calls, *arrays[t]))
                for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    best = min(_timed(run) for _ in range(5))
    return threads * calls * 2 * 6 * 16 * TILE_TERMS / best / 1e9


def test_fma_limit_times_the_tile_it_names():
    """The timed loop does the products it counts: out = calls · aᵀb, exactly (small integers:
    every product and partial sum is exact in float32); the rate is finite and positive."""
    rng = np.random.default_rng(1)
    a = rng.integers(-4, 5, (TILE_TERMS, 6)).astype(np.float32)
    b = rng.integers(-4, 5, (TILE_TERMS, 16)).astype(np.float32)
    out = np.zeros((6, 16), np.float32)
    _fma_tiles(3, a, b, out)
    np.testing.assert_array_equal(out, 3 * (a.astype(np.float64).T @ b.astype(np.float64)))
    rate = fma_limit(1, seconds=0.002)
    assert np.isfinite(rate) and rate > 0


def describe(rates: dict) -> str:
    """'… GFLOP/s on 1 thread, … on 2 threads' for {threads: fma_limit(threads)}."""
    return ", ".join(f"{v:.0f} GFLOP/s on {t} thread{'s' if t > 1 else ''}"
                     for t, v in sorted(rates.items()))


def main() -> int:
    print(describe({t: fma_limit(t) for t in sorted({1, torch.get_num_threads()})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
