"""`simulate_manifold`: the exact zero-loss-manifold flow dθ/dτ = −P_T θ (grokfast.theory.manifold)
integrated in τ = weight_decay · lr · steps from given parameters.

One step of length h (Heun, with a retraction after each stage):

    v1 = v(θ),  θ* = R(θ + h v1),  v2 = v(θ*),  θ' = R(θ + h (v1 + v2)/2)

v the velocity (ReLU: the Filippov sliding velocity of `sliding_velocity`), R the retraction onto Z:
F = H W2 is linear in W2, so W2 ← W2 + H⁺(Y − H W2) lands exactly on Z (the least-squares change of
W2; no Gauss–Newton step in W1 is needed while HHᵀ is invertible). With reset_W2 (the "N = 0" variant)
R sets W2 = H⁺Y instead: the exact metric G is kept, the part N = W2 − H⁺Y dropped every step.

Step control by the norm identity d‖θ‖²/dτ = −2‖P_T θ‖²: a step is accepted when
|‖θ'‖² − ‖θ‖² + h(‖v1‖² + ‖v2‖²)| ≤ rtol · h(‖v1‖² + ‖v2‖²) (the trapezoid of the identity), else
h is halved, down to h_min. A step-size error of Heun falls ∝ h² as h halves; an error that does not
fall below half of the previous try's is a kink event (a pair crossing its kink transversally within the
step, where v jumps), which smaller steps do not remove: that step is taken as it is, as is one at
h_min, counted in `forced`, and h restarts at h0. After an accepted step with half the tolerated
error h doubles, up to h_max. Steps are cut to land on the record times.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.data import Dataset, make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import accuracy, activate, data_loss

from .manifold import ManifoldPoint, _check, sliding_velocity, training_tensors

RECORDS = ("tau", "train_loss", "train_acc", "test_acc", "norm", "norm_W1", "norm_W2", "norm_N",
           "dist_to_Z", "identity_error", "n_sliding", "n_crossing", "cg_iters", "cg_residual",
           "sliding_rounds", "h_min_used", "rejected", "forced")


@dataclass
class ManifoldResult:
    """history: name (RECORDS) → float64 [n_models, n_rows] at τ = 0, record_every, …; NaN after a
    model stopped (grokked with stop_at_grok, or HHᵀ singular: meta["stopped"][i]). dist_to_Z, the
    identity error (relative), sliding / crossing pairs, CG iterations and residual, rejected and
    forced steps are the largest (h the smallest) since the previous record. W1, W2: final."""

    config: Config
    labels: list
    history: dict
    W1: torch.Tensor
    W2: torch.Tensor
    wall_time: float = 0.0
    meta: dict = field(default_factory=dict)

    def grok_tau(self, threshold: Optional[float] = None) -> list:
        """Per model: first recorded τ with test accuracy ≥ threshold (default grok_threshold)."""
        thr = self.config.grok_threshold if threshold is None else threshold
        out = []
        for acc, tau in zip(self.history["test_acc"], self.history["tau"]):
            hit = np.nonzero(np.nan_to_num(acc, nan=-np.inf) >= thr)[0]
            out.append(float(tau[hit[0]]) if len(hit) else None)
        return out

    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(self.config.to_json())
        np.savez(d / "history.npz", **self.history)
        np.savez(d / "params.npz", W1=self.W1.numpy(), W2=self.W2.numpy())
        (d / "manifold.json").write_text(json.dumps(dict(labels=self.labels, wall_time=self.wall_time,
                                                         **self.meta), indent=2))
        return d

    @classmethod
    def load(cls, directory) -> "ManifoldResult":
        d = Path(directory)
        for name in ("config.json", "history.npz", "params.npz", "manifold.json"):
            if not (d / name).is_file():
                raise GrokfastError(f"{d} is not a manifold-flow directory: {name} is missing")
        meta = json.loads((d / "manifold.json").read_text())
        with np.load(d / "history.npz") as h:
            history = {k: h[k] for k in h.files}
        with np.load(d / "params.npz") as pz:
            W1, W2 = (torch.from_numpy(pz[k].copy()) for k in ("W1", "W2"))
        labels, wall = meta.pop("labels"), meta.pop("wall_time")
        return cls(Config.from_json((d / "config.json").read_text()), labels, history, W1, W2,
                   wall, meta)


def retract(W1, W2, X, Y, activation, reset_W2: bool = False, kinks=None):
    """(ManifoldPoint on Z, ‖W2 change‖): W2 + H⁺(Y − H W2), or H⁺Y with reset_W2."""
    pt = ManifoldPoint(W1, W2, X, Y, activation)
    new = pt.H.T @ pt.A(Y) if reset_W2 else W2 + pt.H.T @ pt.A(Y - pt.F)
    return ManifoldPoint(W1, new, X, Y, activation, kinks), float((new - W2).norm())


class _Flow:
    """One model's integration state and its records."""

    def __init__(self, config, data, X, Y, W1, W2, opts):
        self.config, self.X, self.Y, self.o = config, X, Y, opts
        self.act = config.activation
        self.X_test, self.y_test, self.y_train = data.X_test.to(torch.float64), data.test_labels, \
            data.train_labels
        self.pt, d0 = retract(W1, W2, X, Y, self.act, opts["reset_W2"])
        self.h = opts["h0"]
        self.rows: dict = {k: [] for k in RECORDS}
        self._reset_window(d0)

    def _reset_window(self, dist=0.0):
        self.win = dict(dist_to_Z=dist, identity_error=0.0, n_sliding=0, n_crossing=0, cg_iters=0,
                        cg_residual=0.0, sliding_rounds=0, h_min_used=math.inf, rejected=0, forced=0)

    def record(self, tau):
        pt = self.pt
        N = pt.W2 - pt.H.T @ pt.A(self.Y)
        n1, n2 = float(pt.W1.norm()), float(pt.W2.norm())
        test = activate(self.act, self.X_test @ pt.W1) @ pt.W2
        row = dict(tau=tau, train_loss=float(data_loss(pt.F, self.y_train, self.config)),
                   train_acc=float(accuracy(pt.F, self.y_train)),
                   test_acc=float(accuracy(test, self.y_test)), norm=math.hypot(n1, n2),
                   norm_W1=n1, norm_W2=n2, norm_N=float(N.norm()), **self.win)
        if not math.isfinite(row["h_min_used"]):
            row["h_min_used"] = float("nan")
        for k in RECORDS:
            self.rows[k].append(float(row[k]))
        self._reset_window()

    def _stage(self, h):
        dW1, dW2, info, pt = sliding_velocity(self.pt, h, self.o["method"])
        for k in ("n_sliding", "n_crossing", "cg_iters", "sliding_rounds"):
            self.win[k] = max(self.win[k], info[k])
        self.win["cg_residual"] = max(self.win["cg_residual"], info["cg_residual"])
        return dW1, dW2, pt.kinks

    def step(self, h_cap):
        """Advance by at most h_cap (one accepted step); returns the τ covered."""
        o = self.o
        last_err = math.inf
        while True:
            h = min(self.h, h_cap)
            a1, b1, k1 = self._stage(h)
            p0 = self.pt
            mid, _ = retract(p0.W1 + h * a1, p0.W2 + h * b1, self.X, self.Y, self.act, o["reset_W2"])
            saved, self.pt = self.pt, mid
            a2, b2, _ = self._stage(h)
            self.pt = saved
            new, dist = retract(p0.W1 + 0.5 * h * (a1 + a2), p0.W2 + 0.5 * h * (b1 + b2), self.X,
                                self.Y, self.act, o["reset_W2"])
            pred = h * (float((a1 * a1).sum() + (b1 * b1).sum()) + float((a2 * a2).sum() + (b2 * b2).sum()))
            meas = float((new.theta() ** 2).sum() - (p0.theta() ** 2).sum())
            err = abs(meas + pred) / pred if pred > 0 else 0.0
            # a step-size error falls ∝ h² as h halves; one that does not (to under half) is a
            # kink event (a pair crossing within the step), which smaller steps do not remove
            event = err > last_err / 2
            if err > o["rtol"] and h > o["h_min"] and not event:
                self.win["rejected"] += 1
                self.h, last_err = max(h / 2, o["h_min"]), err
                continue
            if err > o["rtol"]:  # not a step-size error (a kink event): take it, start h afresh
                self.win["forced"] += 1
                self.h = o["h0"]
            self.pt = new
            self.win["dist_to_Z"] = max(self.win["dist_to_Z"], dist)
            self.win["identity_error"] = max(self.win["identity_error"], err)
            self.win["h_min_used"] = min(self.win["h_min_used"], h)
            if err < o["rtol"] / 2 and h == self.h:
                self.h = min(2 * self.h, o["h_max"])
            return h


def simulate_manifold(config: Config, W1, W2, *, data: Optional[Dataset] = None,
                      tau_max: float = 6.0, record_every: float = 0.05, reset_W2: bool = False,
                      h0: float = 0.01, h_max: float = 0.05, h_min: float = 1e-4, rtol: float = 0.01,
                      method: str = "gram", stop_at_grok: bool = False,
                      labels: Optional[Sequence] = None, log=None,
                      workers: int = 1) -> ManifoldResult:
    """The exact manifold flow from (W1, W2) [(M,) d_in, width], [(M,) width, p], first retracted onto
    Z, for τ up to tau_max, recorded every record_every (float64, CPU; `workers` models at a time,
    each in its own thread on the caller's torch threads: one model's numbers do not depend on it).

    reset_W2: the N = 0 variant (W2 = H⁺Y after every step). h0, h_max, h_min, rtol: the step
    control (module docstring). method: the velocity's solve ("w1" or "cg"). stop_at_grok: stop a
    model at its first record with test accuracy ≥ config.grok_threshold. A model whose HHᵀ turns
    singular stops there (meta["stopped"][i]; its records before are kept). meta["model_seconds"]:
    each model's wall time.
    """
    W1, W2 = _check(config, W1, W2)
    if W1.dim() == 2:
        W1, W2 = W1[None], W2[None]
    if not (tau_max > 0 and record_every > 0 and 0 < h_min <= h0 <= h_max and rtol > 0
            and workers >= 1):
        raise GrokfastError(f"need tau_max > 0, record_every > 0, 0 < h_min ≤ h0 ≤ h_max, rtol > 0, "
                            f"workers ≥ 1 (got {tau_max}, {record_every}, {h_min}, {h0}, {h_max}, "
                            f"{rtol}, {workers})")
    data = make_dataset(config) if data is None else data
    X, Y = training_tensors(config, data)
    labels = list(range(len(W1))) if labels is None else list(labels)
    opts = dict(reset_W2=reset_W2, h0=h0, h_max=h_max, h_min=h_min, rtol=rtol, method=method)
    n_rec = int(math.floor(tau_max / record_every + 1e-9))
    history = {k: np.full((len(W1), n_rec + 1), np.nan) for k in RECORDS}
    t0, threads = time.perf_counter(), torch.get_num_threads()

    def one(i):
        torch.set_num_threads(threads)  # the caller's intra-op threads, in this worker thread too
        t_model = time.perf_counter()
        flow = _Flow(config, data, X, Y, W1[i], W2[i], opts)
        flow.record(0.0)
        tau, stopped = 0.0, None
        try:
            for j in range(1, n_rec + 1):
                if stop_at_grok and flow.rows["test_acc"][-1] >= config.grok_threshold:
                    break
                target = j * record_every
                while target - tau > 1e-12:
                    tau += flow.step(target - tau)
                tau = target
                flow.record(tau)
                if log is not None and j % round(1 / record_every) == 0:
                    log(f"[manifold] model {labels[i]}: τ {tau:.3g}, test accuracy "
                        f"{flow.rows['test_acc'][-1]:.3g}, {time.perf_counter() - t_model:.0f} s")
        except GrokfastError as e:
            stopped = f"stopped at τ = {tau:.4g} (records before kept): {e}"
        seconds = time.perf_counter() - t_model
        if log is not None:
            log(f"[manifold] model {labels[i]}: τ {tau:.3g}, {seconds:.1f} s")
        return flow, stopped, seconds

    if workers == 1:
        done = [one(i) for i in range(len(W1))]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(one, range(len(W1))))
    for i, (flow, _, _) in enumerate(done):
        for k, v in flow.rows.items():
            history[k][i, :len(v)] = v
    stopped, seconds = [d[1] for d in done], [d[2] for d in done]
    finals = [(d[0].pt.W1, d[0].pt.W2) for d in done]
    meta = dict(tau_max=tau_max, record_every=record_every, reset_W2=reset_W2, h0=h0, h_max=h_max,
                h_min=h_min, rtol=rtol, method=method, stop_at_grok=stop_at_grok, stopped=stopped,
                model_seconds=seconds)
    return ManifoldResult(config, labels, history, torch.stack([f[0] for f in finals]),
                          torch.stack([f[1] for f in finals]), time.perf_counter() - t0, meta)
