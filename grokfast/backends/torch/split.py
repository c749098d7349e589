"""Every core on one model: the numba kernels (kernels/cpu/grad.py, split_loss.py) of a large model
split over a pool of threads by independent outputs, so the bits never depend on the thread count.

A step of model m (CoreSplit.step) is W2ᵀ (one thread, a copy), then phases, each cut into one
contiguous range per thread, the caller's thread taking the last range, and waited for:

    a loss by rows (row_loss: the portable MSE, cross-entropy and stablemax, LossGrad.rows):
        rows n: forward (first layer, Ŷ), dŶ, dZ = dH ⊙ σ'(Z), block by block of rows
        (kernels/cpu/rows.py: a block's H, Z, Ŷ still in cache when its dŶ and dZ read them)  |
        hidden units k: ∇W2[k, :], then ∇W1[:, k]
    without one:
        rows n: forward  |  dŶ of every model (the caller's loss_grad, on its thread alone)  |
        rows n: dZ, then hidden units k of ∇W2  |  hidden units k of ∇W1

A phase only reads what earlier phases wrote: the forward's rows feed the same rows' dŶ and dZ
(dZ[n] reads dŶ[n], W2ᵀ and its own row of H or Z); ∇W2 reads every row of H and dŶ, ∇W1 every
row of dZ (the buffer dH). Row cuts are multiples of 16 (whole register tiles of Ŷ's rows for
every range but the last), hidden-unit cuts of 16 (whole tile columns of ∇W2ᵀ and whole vectors
of ∇W1). ∇W2 by hidden units rather than by its p columns: every thread takes every row tile of
∇W2ᵀ, the 1-row tail of p = 97 = 16·6 + 1 included, on its own columns of H (half of H read per
thread instead of all of it), and the phase's threads finish together (by columns the caller's
range held the tail: 2.25 against 2.00 ms of thread CPU; by units 2.12–2.22 ms wall against
2.21–2.34 on gromov / power, bench/RESULTS.md). Every output is computed
whole by one thread, in the order the kernels write, so a model's bits are those of the
one-thread kernels (forward_portable, update.mse_grad, backward) for any thread count and cuts.
TorchStepper uses it for numerics "portable" when it steps with more than one intra-op thread
(a large model alone: paths.choose_paths and paths.shard_count); many models keep going over
models, one shard per thread (sharded.py).
A loss kernel by rows (dŶ[n] from Ŷ[n] alone) joins the forward's phase through row_loss, and any
kernel over element ranges can run on the same threads through CoreSplit.run.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Optional, Sequence


def cuts(n: int, parts: int, multiple: int) -> list:
    """[(a, b), …]: 0 … n cut into at most `parts` contiguous non-empty ranges whose inner bounds
    are multiples of `multiple`."""
    step = -(-n // (parts * multiple)) * multiple if n else multiple
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def wait_all(futures: Sequence) -> None:
    """Return once every future is done, a Ctrl-C while waiting included (the threads write to
    shared buffers: none may be left running when the caller goes on)."""
    while not all(f.done() for f in futures):
        try:
            wait(futures)
        except KeyboardInterrupt:
            pass


def _calls(calls: Sequence) -> None:
    for fn, args in calls:
        fn(*args)


class CoreSplit:
    """The portable forward and backward of grokfast.kernels.cpu.grad over `threads` threads: the
    caller's and a pool of threads − 1."""

    def __init__(self, cpu_grad, threads: int):
        self.k, self.threads = cpu_grad, threads
        self.pool = ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="grokfast-core")

    def run(self, parts: Sequence[Sequence]) -> None:
        """Every part (a list of (fn, args) calls, run in order) at once, one per thread, the
        last on the caller's; returns once all have finished (a Ctrl-C while waiting too, so no
        kernel is left writing to the buffers), then raises the first error."""
        futures = [self.pool.submit(_calls, calls) for calls in parts[:-1]]
        try:
            _calls(parts[-1])
        finally:
            wait_all(futures)
        for f in futures:
            f.result()

    def forward_portable(self, models, theta, i0, i1, P1, quadratic, zero, Z, H, w2t,
                         logits) -> None:
        """grad.forward_portable (same signature), by rows."""
        for m in models:
            self.k.w2_transpose(theta[m], P1, logits.shape[2], w2t[m])
            self.run(_deal(self._forward(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits)))

    def forward_logits(self, models, theta, i0, i1, P1, quadratic, zero, scratch,
                       logits) -> None:
        """kernels/cpu/rows.forward_logits (an evaluation's Ŷ, Z and H only in block scratch)
        of every sample of i0, i1, by rows: range r through scratch[r], its (Zs, Hs)."""
        from grokfast.kernels.cpu import rows
        self.run([[(rows.forward_logits, (models, theta, i0, i1, P1, quadratic, zero,
                                          *scratch[r], logits, a, b))]
                  for r, (a, b) in enumerate(cuts(len(i0), self.threads, 16))])

    def backward(self, models, order, starts, P1, quadratic, dlogits, Z, H, w2t, g2t, dH,
                 grad) -> None:
        """grad.backward (same signature): dH by rows with ∇W2 by hidden units, then ∇W1."""
        for m in models:
            self.run(_deal(self._hidden(m, quadratic, dlogits, w2t, Z, H, dH),
                           self._w2(m, P1, dlogits, H, g2t, grad)))
            self.run(_deal(self._w1(m, order, starts, quadratic, dH, grad)))

    def step(self, models, nb: dict, P1: int, quadratic: bool, row_loss: Optional[Callable],
             loss_grad: Callable[[], object]) -> None:
        """The forward, the loss gradient and the backward of the models listed in `models` on
        the stepper's numba buffers nb (TorchStepper._numba_buffers): forward_portable, then dŶ,
        then backward. dŶ: row_loss(key, rows) -> (loss, labels, scale), kernels/cpu/rows.py's
        loss arguments for a range of rows (LossGrad.rows), whose blocks of rows.BLOCK rows each
        run the forward, dŶ and dZ in turn in one phase; or without it loss_grad() (every
        model's dŶ at once, on this thread) between the forward's and the backward's phases."""
        theta, i0, i1, Z, H, dH = nb["theta"], nb["i0"], nb["i1"], nb["Z"], nb["H"], nb["dH"]
        w2t, g2t, grad, dlogits = nb["w2t"], nb["g2t"], nb["grad"], nb["dlogits"]
        order, starts = nb["order"], nb["starts"]
        fwd = (theta, i0, i1, P1, quadratic, nb["zero"], Z, H, nb["logits"])
        if row_loss is None:
            self.forward_portable(models, *fwd[:8], w2t, *fwd[8:])         # fwd[7] is H
            loss_grad()
            self.backward(models, order, starts, P1, quadratic, dlogits, Z, H, w2t, g2t, dH,
                          grad)
            return
        from grokfast.kernels.cpu import rows
        ranges = self._rows(Z)
        losses = [row_loss(r, min(rows.BLOCK, b - a)) for r, (a, b) in enumerate(ranges)]
        for m in models:
            self.k.w2_transpose(theta[m], P1, dlogits.shape[2], w2t[m])
            self.run([[(rows.rows_step, (m, *fwd, *loss, dlogits, w2t, dH, a, b))]
                      for (a, b), loss in zip(ranges, losses)])
            self.run(_deal(self._w2(m, P1, dlogits, H, g2t, grad),
                           self._w1(m, order, starts, quadratic, dH, grad)))

    # the calls of one phase, one per range: rows n (multiples of 16), hidden units k of ∇W2
    # and of ∇W1 (multiples of 16)
    def _rows(self, Z) -> list:
        return cuts(Z.shape[1], self.threads, 16)

    def _forward(self, m, theta, i0, i1, P1, quadratic, zero, Z, H, logits) -> list:
        return [(self.k.forward_rows, (m, theta, i0, i1, P1, quadratic, zero, Z, H,
                                       logits, a, b)) for a, b in self._rows(Z)]

    def _hidden(self, m, quadratic, dlogits, w2t, Z, H, dH) -> list:
        return [(self.k.backward_hidden, (m, quadratic, dlogits, w2t, Z, H, dH, a, b))
                for a, b in self._rows(dH)]

    def _w2(self, m, P1, dlogits, H, g2t, grad) -> list:
        return [(self.k.backward_w2_units, (m, P1, dlogits, H, g2t, grad, a, b))
                for a, b in cuts(H.shape[2], self.threads, 16)]

    def _w1(self, m, order, starts, quadratic, dH, grad) -> list:
        return [(self.k.backward_w1, (m, order, starts, quadratic, dH, grad, a, b))
                for a, b in cuts(dH.shape[2], self.threads, 16)]


def _deal(*jobs: Sequence) -> list:
    """Parts for CoreSplit.run from lists of calls: part t runs the t-th call of each list, in
    the order the lists are given."""
    parts: list = [[] for _ in range(max(map(len, jobs)))]
    for calls in jobs:
        for t, call in enumerate(calls):
            parts[t].append(call)
    return parts
