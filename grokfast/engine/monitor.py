"""What the run loop reads from each chunk's rows: divergence, milestones, grok stops, the progress bar.

`Progress` is the loop's own state (per model where an array); a checkpoint carries it under
"launch" (its field names are part of the checkpoint format).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from grokfast.store.result import first_step


@dataclass
class Progress:
    """The loop's own state, per model where an array; a checkpoint carries it (to_dict)."""

    step: int
    active: np.ndarray              # bool [M]: still being stepped
    steps_done: np.ndarray          # int64 [M]
    streak: np.ndarray              # int64 [M]: consecutive evaluations ≥ grok_threshold
    grok_met: np.ndarray            # int64 [M]: step completing the stop_at streak, −1 before
    diverged: list                  # message or None, per model
    stop_reason: list               # "grok" / "diverged" / None, per model
    memorization_step: list
    grok_step: list
    wall: float = 0.0               # seconds trained by earlier calls (resumed runs)

    @classmethod
    def start(cls, M: int) -> "Progress":
        return cls(0, np.ones(M, bool), np.zeros(M, np.int64), np.zeros(M, np.int64),
                   np.full(M, -1, np.int64), [None] * M, [None] * M, [None] * M, [None] * M)

    def to_dict(self, wall: float) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["wall"] = wall
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Progress":
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def digest(configs, rows: dict, prog: Progress, step0: int, n: int, stop_at, patience: int):
    """Read one chunk's rows: divergence, milestones, stop_at streaks. Returns (n_valid [M], events)."""
    M = len(configs)
    n_rows = rows["step"].shape[1]
    n_valid = np.zeros(M, dtype=np.int64)
    events = []
    for i in np.nonzero(prog.active)[0]:
        c = configs[i]
        bad = np.nonzero(~np.isfinite(rows["train_loss"][i]))[0]
        keep = int(bad[0]) if len(bad) else n_rows
        n_valid[i] = keep
        prog.steps_done[i] = step0 + n
        h = {k: rows[k][i, :keep] for k in ("step", "train_acc", "test_acc")}
        events += _milestones(c, i, h, prog)
        if stop_at == "grok" and prog.grok_met[i] < 0:
            _grok_streak(c, i, h, prog, patience)
        if len(bad):
            s = int(rows["step"][i, bad[0]])
            last = max(s - c.log_every, 0)  # the row before it (in this chunk or the last)
            events.append(_diverged(c, i, s, prog, (last, s), "train loss"))
    return n_valid, events


def check_params(configs, stepper, prog: Progress, step0: int, n: int, log_every: int) -> list:
    """Models still active whose parameters θ_{step0+n} are not all finite, though every recorded
    row was (the divergence fell between rows): stopped as diverged, with the step range."""
    import torch
    active = np.nonzero(prog.active)[0]
    if not len(active):
        return []
    W1, W2 = stepper.params()
    bad = ~(torch.isfinite(W1.flatten(1)).all(1) & torch.isfinite(W2.flatten(1)).all(1)).numpy()
    events = []
    end = step0 + n
    for i in active[bad[active]]:
        last = max((end - 1) // log_every * log_every, 0)  # θ of the last recorded row was finite
        events.append(_diverged(configs[i], i, end, prog, (last, end), "parameters"))
    return events


def _milestones(c, i: int, h: dict, prog: Progress) -> list:
    events = []
    for name, key, threshold in (("memorized", "train_acc", 1.0),
                                 ("grokked", "test_acc", c.grok_threshold)):
        attr = "memorization_step" if name == "memorized" else "grok_step"
        if getattr(prog, attr)[i] is None:
            s = first_step(h, key, threshold)
            if s is not None:
                getattr(prog, attr)[i] = s
                events.append((name, dict(at=s, model=int(i), seed=c.seed)))
    return events


def _grok_streak(c, i: int, h: dict, prog: Progress, patience: int) -> None:
    """Carry model i's run of evaluations ≥ grok_threshold; note the step it reaches `patience`."""
    evaluated = np.isfinite(h["test_acc"])
    ok = h["test_acc"][evaluated] >= c.grok_threshold
    if len(ok):
        idx = np.arange(len(ok))
        last_miss = np.maximum.accumulate(np.where(~ok, idx, -1))
        streak = np.where(last_miss < 0, idx + 1 + prog.streak[i], idx - last_miss)
        hit = np.nonzero(streak >= patience)[0]
        if len(hit):
            prog.grok_met[i] = int(h["step"][evaluated][hit[0]])
        prog.streak[i] = streak[-1]


def final_divergence(c, i: int, prog: Progress, log_every: int) -> tuple:
    """Model i ended with finite parameters but a non-finite training loss: diverged, between
    its last recorded row (finite) and its last step."""
    end = int(prog.steps_done[i])
    last = max((end - 1) // log_every * log_every, 0)
    return _diverged(c, i, end, prog, (last, end), "train loss")


def _diverged(c, i: int, s: int, prog: Progress, span: tuple, what: str) -> tuple:
    prog.diverged[i] = (f"non-finite {what} at step {s} (seed {c.seed}), finite at step "
                        f"{span[0]}: diverged within steps {span[0] + 1}–{span[1]}; history "
                        f"before it is kept. Lower lr (now {c.lr:g}) or use loss_reduction='mean'")
    prog.steps_done[i] = s
    prog.active[i] = False
    prog.stop_reason[i] = "diverged"
    return ("diverged", dict(at=s, model=int(i), seed=c.seed, message=prog.diverged[i],
                             steps=[span[0] + 1, span[1]]))


def diverged_steps(message) -> str:
    """"A–B", the steps a Result.diverged message says the divergence fell within ("" if none)."""
    import re
    m = re.search(r"within steps (\d+)–(\d+)", message or "")
    return f"{m.group(1)}–{m.group(2)}" if m else ""


def apply_grok_stops(configs, prog: Progress) -> list:
    """Stop the models whose grok streak is complete (called at chunk-size multiples only)."""
    events = []
    for i in np.nonzero(prog.active & (prog.grok_met >= 0))[0]:
        prog.active[i] = False
        prog.stop_reason[i] = "grok"
        prog.steps_done[i] = prog.step
        events.append(("stopped", dict(model=int(i), seed=configs[i].seed, reason="grok",
                                       condition_met_at=int(prog.grok_met[i]))))
    return events


def progress_bar(steps: int, n_models: int, initial: int = 0):
    """steps/s and ETA come from tqdm; the postfix adds accuracies and ‖θ‖ (ranges for a batch)."""
    from tqdm.auto import tqdm
    return tqdm(total=steps, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1,
                desc=f"{n_models} models" if n_models > 1 else "train")


def _span(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "-"
    return f"{v[0]:.3f}" if v.size == 1 else f"{v.min():.2f}–{v.max():.2f}"


def update_bar(bar, n: int, rows: dict, prog: Progress) -> None:
    def last(name):
        vals = []
        for i in range(rows[name].shape[0]):
            ok = np.nonzero(np.isfinite(rows[name][i]))[0]
            vals.append(rows[name][i, ok[-1]] if len(ok) else np.nan)
        return np.asarray(vals)
    text = (f"train {_span(last('train_acc'))} test {_span(last('test_acc'))} "
            f"‖θ‖ {_span(last('norm'))}")
    M = len(prog.active)
    if M > 1:
        grokked = sum(s is not None for s in prog.grok_step)
        text += f" grokked {grokked}/{M}"
        if not prog.active.all():
            text += f" active {int(prog.active.sum())}/{M}"
    bar.set_postfix_str(text, refresh=False)
    bar.update(n)
