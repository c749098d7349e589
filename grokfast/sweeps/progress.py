"""The sweep's progress bar."""
from __future__ import annotations

import time
from typing import Sequence

from .plan import Launch
from .table import RESUMABLE_STOPS


class SweepBar:
    """One bar for the whole sweep. It fills with the planned work, steps × models of every
    launch (a launch is busy with all its models until it ends; one that ends early, its models
    stopped, fills the rest at once), so its rate and ETA are the machine's; the postfix adds the
    model-steps of models still training per second, models done and grokked."""

    def __init__(self, launches: Sequence[Launch], done: Sequence[Launch]):
        from tqdm.auto import tqdm
        self.n_models = sum(l.n_models for l in launches)
        self.models_done = sum(l.n_models for l in done)
        self.filled: dict[int, int] = {}
        self.trained = 0
        self.grokked = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=sum(l.model_steps for l in launches),
                        initial=sum(l.model_steps for l in done), unit="model-step",
                        unit_scale=True, dynamic_ncols=True, smoothing=0.1, desc="sweep")
        self._postfix()

    def _postfix(self) -> None:
        rate = self.trained / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"training {rate:,.0f} model-steps/s, models "
                                 f"{self.models_done}/{self.n_models} done, grokked "
                                 f"{self.grokked}", refresh=False)

    def chunk(self, launch: Launch, steps: int, stepped: int) -> None:
        self.trained += steps * stepped
        n = steps * launch.n_models
        self.filled[launch.index] = self.filled.get(launch.index, 0) + n
        self._postfix()
        self.bar.update(n)

    def launch_done(self, launch: Launch, rows: Sequence[dict]) -> None:
        filled = self.filled.pop(launch.index, 0)
        if any(r["stop_reason"] in RESUMABLE_STOPS for r in rows):
            return  # stopped early: its rest is still to run (--resume)
        self.bar.update(max(0, launch.model_steps - filled))
        self.models_done += launch.n_models
        self.grokked += sum(r["grok_step"] is not None for r in rows)
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
