"""Every core on one model: the numba kernels (kernels/cpu/grad.py) of a large model split over a
pool of threads by independent outputs, so the bits never depend on the thread count.

Per model and step: W2ᵀ (one thread, a copy), then four phases, each cut into one contiguous range
per thread and waited for: the forward by rows of Ŷ (first layer, Hᵀ, Ŷᵀ, Ŷ; cuts at multiples of
16 so every range but the last fills whole vector columns), ∇W2 by columns j, dH and dZ by rows n,
∇W1 by hidden units k. Every output is computed whole by one thread, in the order the kernels
write, so a model's bits are those of the one-thread kernels (forward_portable, backward) for any
thread count. TorchStepper uses it for numerics "portable" when it steps with more than one
intra-op thread (a large model alone: paths.choose_paths and paths.shard_count); many models keep
going over models, one shard per thread (sharded.py).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait


def cuts(n: int, parts: int, multiple: int) -> list:
    """[(a, b), …]: 0 … n cut into at most `parts` contiguous non-empty ranges whose inner bounds
    are multiples of `multiple`."""
    step = -(-n // (parts * multiple)) * multiple if n else multiple
    return [(a, min(a + step, n)) for a in range(0, n, step)]


class CoreSplit:
    """The portable forward and backward of grokfast.kernels.cpu.grad, over `threads` threads
    (signatures of grad.forward_portable and grad.backward)."""

    def __init__(self, cpu_grad, threads: int):
        self.k, self.threads = cpu_grad, threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="grokfast-core")

    def _each(self, fn, ranges, *args) -> None:
        futures = [self.pool.submit(fn, *args, a, b) for a, b in ranges]
        wait(futures)
        for f in futures:
            f.result()

    def forward_portable(self, models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t, ht, yt,
                         logits) -> None:
        p, rows = logits.shape[2], cuts(Z.shape[1], self.threads, 16)
        for m in models:
            self.k.w2_transpose(theta[m], P1, p, w2t[m])
            self._each(self.k.forward_rows, rows, m, theta, i0, i1, P1, quadratic, zero, Z, H,
                       ht, yt, logits)

    def backward(self, models, i0, i1, P1, quadratic, dlogits, Z, H, w2t, g2t, dH, grad) -> None:
        N, w, p, T = Z.shape[1], Z.shape[2], dlogits.shape[2], self.threads
        for m in models:
            self._each(self.k.backward_w2, cuts(p, T, 2), m, P1, dlogits, H, g2t, grad)
            self._each(self.k.backward_hidden, cuts(N, T, 2), m, quadratic, dlogits, Z, w2t, dH)
            self._each(self.k.backward_w1, cuts(w, T, 16), m, i0, i1, P1, quadratic, dH, grad)
