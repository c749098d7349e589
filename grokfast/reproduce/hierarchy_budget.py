"""The budget of `grokfast reproduce hierarchy` (grokfast.reproduce.hierarchy): what is trained and
simulated, in full and --quick mode, and how a finished directory's budget is read back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .prediction import PredictionBudget, read_budget
from .scaling import override

COMMAND = "reproduce hierarchy"


@dataclass
class HierarchyBudget:
    weight_decays: tuple = (2e-4, 4e-4)
    lrs: tuple = (2.0,)
    seeds: int = 4
    steps: int = 20_000
    log_every: int = 50
    sim_time: float = 10.0          # Eq. 20's flow time per model (L5, L6)
    sim_eta: float = 2e-3           # Eq. 20's Euler step
    sim_resolution: float = 0.02
    tau_max: float = 6.0            # the manifold flow's τ from memorization (L3, L4)
    record_every: float = 0.05
    rtol: float = 0.05              # the manifold flow's norm-identity tolerance per step
    h_min: float = 2.5e-3           # … its smallest step (h0 = 0.01, h_max = 0.05)
    bootstrap: int = 2000
    mode: str = "full"

    def prediction_budget(self) -> PredictionBudget:
        """The Eq. 20 settings in `reproduce prediction`'s budget (its simulations are reused)."""
        return PredictionBudget(weight_decays=self.weight_decays, lrs=self.lrs, seeds=self.seeds,
                                steps=self.steps, log_every=self.log_every, sim_time=self.sim_time,
                                sim_eta=self.sim_eta, sim_resolution=self.sim_resolution,
                                bootstrap=self.bootstrap, mode=self.mode)


def make_budget(quick: bool = False, seeds: Optional[int] = None, steps: Optional[int] = None,
                weight_decays: Optional[Sequence[float]] = None,
                lrs: Optional[Sequence[float]] = None) -> HierarchyBudget:
    """Full: weight decay 2e-4, 4e-4 × lr 2 × 4 seeds (8 models), 20 000 steps, τ ≤ 6 on the
    manifold flows.
    --quick: weight decay 4e-4 × lr 2 × 2 seeds, 10 000 steps, τ ≤ 4 on the manifold flows."""
    b = HierarchyBudget(weight_decays=(4e-4,), lrs=(2.0,), seeds=2, steps=10_000, log_every=25,
                        tau_max=4.0, sim_time=8.0, mode="quick") if quick else HierarchyBudget()
    return override(b, seeds, steps, weight_decays, lrs)


def budget_of(out) -> HierarchyBudget:
    return read_budget(out, HierarchyBudget, "hierarchy")
