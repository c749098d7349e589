"""The chunk plan: how many steps each `stepper.advance` call runs. A chunking never changes results."""
from __future__ import annotations

from typing import Optional, Sequence


def chunk_size(requested: int, log_every: int) -> int:
    """`requested` steps rounded up to a multiple of log_every (at least one log interval)."""
    return max(log_every, -(-requested // log_every) * log_every)


def rows_before(step: int, log_every: int) -> int:
    """Recorded rows of steps 0 … step−1 (the history position at `step`)."""
    return -(-step // log_every)


def next_cut(step: int, *, steps: int, limit: int, chunk: int, pauses: Sequence[int],
             checkpoint_every: Optional[int], window: Optional[tuple]) -> int:
    """The step the chunk starting at `step` ends at: the next multiple of the chunk size, cut at
    the end, the max_steps limit, the next observer pause, checkpoint_every multiple and profile
    window edge."""
    cuts = [steps, limit, (step // chunk + 1) * chunk, *pauses[:1]]
    if checkpoint_every:
        cuts.append((step // checkpoint_every + 1) * checkpoint_every)
    if window:
        cuts += [w for w in window if w > step]
    return min(cuts)
