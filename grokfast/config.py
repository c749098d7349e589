"""`Config`: every setting a run depends on, validated, with presets and a JSON round trip.

Conventions the paper leaves open are explicit fields, never guesses:

* ``loss_reduction``: ``"mean"`` (PyTorch's default; MSE divides the squared error summed over all
  n·p outputs by n·p, cross-entropy divides by n) or ``"sum"`` (the paper's ‖Ŷ − Y‖²_F).
* ``weight_decay`` follows torch.optim: for gd/sgd/adam the gradient gets ``+ weight_decay·θ``; for
  adamw the decay is decoupled, ``θ ← θ·(1 − lr·weight_decay)``. The paper's penalty λ‖θ‖² (no ½) is
  ``weight_decay = 2λ`` in this convention.
* ``init``: ``"torch"`` is nn.Linear(bias=False)'s default, U(−1/√fan_in, 1/√fan_in) for each layer;
  ``"normal"`` draws N(0, init_std²) (init_std defaults to 1/√fan_in). Both are multiplied by
  ``init_scale`` (Omnigrok's α).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Optional

from .errors import GrokfastError, check_choice, closest
from .inputs import plain_number

OPERATIONS = ("add", "sub", "mul", "div", "a2+b2", "a2+ab+b2", "a3+ab")
PAIRS = ("unordered", "ordered")
ENCODINGS = ("sum", "concat")
ACTIVATIONS = ("relu", "quadratic")
INITS = ("torch", "normal")
LOSSES = ("mse", "cross_entropy", "stablemax")
REDUCTIONS = ("mean", "sum")
LOSS_DTYPES = ("same", "float64")
OPTIMIZERS = ("gd", "sgd", "adam", "adamw")
GRAD_FILTERS = ("none", "ema", "ma")
FILTER_TYPES = ("mean", "sum")
DTYPES = ("float32", "float64")
PRECISIONS = ("ieee", "tf32", "tf32x3")
NUMERICS = ("portable", "host")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


@dataclass(frozen=True)
class Config:
    """Everything one training run depends on. Defaults are the paper's App. D setting (paper-real).

    Task: ``p`` (modulus), ``operation`` (one of OPERATIONS), ``pairs`` ("unordered": a ≤ b, the
    paper's; "ordered": all p² pairs), ``encoding`` ("sum": X = e_a + e_b, W1 is p×width;
    "concat": [e_a; e_b], W1 is 2p×width), the split (exactly one of ``train_frac`` and ``n_test``,
    drawn with ``split_seed``), ``label_noise`` (fraction of training labels replaced by a random
    wrong label).
    Model: ``width``, ``activation``, ``init``, ``init_std``, ``init_scale``; parameters are W1
    (d_in×width) and W2 (width×p), no biases, Ŷ = σ(X W1) W2.
    Loss: ``loss``, ``loss_reduction``, ``loss_dtype`` ("float64" computes cross-entropy/stablemax
    from float64 logits, as Nanda et al.).
    Optimizer: ``optimizer`` ("gd" is SGD without momentum), ``lr``, ``weight_decay``, ``momentum``,
    ``nesterov``, ``betas``, ``eps``, ``warmup_steps`` (linear: lr·min(1, (t+1)/warmup_steps)).
    Gradient filters (Grokfast, applied between backward and the optimizer): ``grad_filter``,
    ``filter_alpha`` (EMA), ``filter_lamb``, ``filter_window``/``filter_type``/``filter_warmup`` (MA),
    ``filter_normalize_lr`` (divide lr by 1 + lamb). ``orthograd``: ⊥Grad before the base step.
    ``fixed_norm``: rescale θ after every step to keep ‖θ‖ at its initial value (Omnigrok).
    Run: ``steps``, ``seed`` (initialization), ``dtype``, ``device``, ``precision`` (GPU matmul
    precision of the Triton engine), ``numerics`` (CPU arithmetic of the torch backend: "portable",
    the same bits on every x86-64 CPU, or "host", the host-tuned MKL / vector-width paths),
    ``log_every`` (statistics recorded every this many steps),
    ``eval_every`` (test metrics; a multiple of log_every), ``grok_threshold``.
    """

    # task
    p: int = 11
    operation: str = "add"
    pairs: str = "unordered"
    encoding: str = "sum"
    train_frac: Optional[float] = None
    n_test: Optional[int] = 7
    split_seed: int = 0
    label_noise: float = 0.0
    # model
    width: int = 128
    activation: str = "relu"
    init: str = "torch"
    init_std: Optional[float] = None
    init_scale: float = 1.0
    # loss
    loss: str = "mse"
    loss_reduction: str = "mean"
    loss_dtype: str = "same"
    # optimizer
    optimizer: str = "gd"
    lr: float = 1.0
    weight_decay: float = 1e-4
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    # gradient filters and constraints
    grad_filter: str = "none"
    filter_alpha: float = 0.98
    filter_lamb: float = 2.0
    filter_window: int = 100
    filter_type: str = "mean"
    filter_warmup: bool = True
    filter_normalize_lr: bool = False
    orthograd: bool = False
    fixed_norm: bool = False
    # run
    steps: int = 100_000
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    precision: str = "ieee"
    numerics: str = "portable"
    log_every: int = 100
    eval_every: int = 100
    grok_threshold: float = 0.99

    def __post_init__(self):
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise GrokfastError(f"betas={self.betas!r} must be two numbers in [0, 1), e.g. "
                                f"betas=(0.9, 0.999) (--set betas=0.9,0.999)") from None
        object.__setattr__(self, "betas", betas)
        for f in fields(self):
            object.__setattr__(self, f.name, plain_number(getattr(self, f.name)))
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise GrokfastError naming the first invalid field and what to do."""
        def need(cond, msg):
            if not cond:
                raise GrokfastError(msg)

        for name, valid in (("operation", OPERATIONS), ("pairs", PAIRS), ("encoding", ENCODINGS),
                            ("activation", ACTIVATIONS), ("init", INITS), ("loss", LOSSES),
                            ("loss_reduction", REDUCTIONS), ("loss_dtype", LOSS_DTYPES),
                            ("optimizer", OPTIMIZERS), ("grad_filter", GRAD_FILTERS),
                            ("filter_type", FILTER_TYPES), ("dtype", DTYPES),
                            ("precision", PRECISIONS), ("numerics", NUMERICS)):
            check_choice(name, getattr(self, name), valid)
        for name in ("p", "width", "steps", "seed", "split_seed", "warmup_steps", "filter_window",
                     "log_every", "eval_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool),
                 f"{name} must be an integer, got {v!r}")
        for name in ("lr", "weight_decay", "momentum", "eps", "init_scale", "label_noise",
                     "filter_alpha", "filter_lamb", "grok_threshold"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                 f"{name} must be a finite number, got {v!r}")
        need(self.p >= 2, f"p={self.p}: the modulus must be at least 2")
        if self.operation == "div":
            need(is_prime(self.p), f"operation='div' needs a prime p (b must be invertible mod p); "
                 f"p={self.p} is not prime — choose e.g. p=11, 97 or 113")
        need(self.width >= 1, f"width={self.width}: the hidden layer needs at least 1 unit")
        need(self.steps >= 0, f"steps={self.steps}: must be ≥ 0")
        need(0 <= self.seed < 2 ** 63 and 0 <= self.split_seed < 2 ** 63,
             f"seed={self.seed} and split_seed={self.split_seed} must lie in [0, 2**63)")
        need((self.train_frac is None) != (self.n_test is None),
             "set exactly one of train_frac and n_test (setting one with Config.replace or --set "
             "clears the other)")
        if self.train_frac is not None:
            need(isinstance(self.train_frac, (int, float)) and 0.0 < self.train_frac < 1.0,
                 f"train_frac={self.train_frac!r} must lie strictly between 0 and 1")
            n_train = round(self.train_frac * self.n_pairs)
            need(0 < n_train < self.n_pairs,
                 f"train_frac={self.train_frac} leaves an empty train or test set of the "
                 f"{self.n_pairs} pairs; choose a fraction between {1 / self.n_pairs:.3g} and "
                 f"{1 - 1 / self.n_pairs:.3g}")
        else:
            need(isinstance(self.n_test, int) and 0 < self.n_test < self.n_pairs,
                 f"n_test={self.n_test!r} must be between 1 and {self.n_pairs - 1} "
                 f"(there are {self.n_pairs} pairs)")
        need(0.0 <= self.label_noise <= 1.0, f"label_noise={self.label_noise} must lie in [0, 1]")
        need(self.lr > 0, f"lr={self.lr} must be > 0")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be ≥ 0")
        need(self.init_scale > 0, f"init_scale={self.init_scale} must be > 0")
        if self.init_std is not None:
            need(isinstance(self.init_std, (int, float)) and math.isfinite(self.init_std)
                 and self.init_std > 0, f"init_std={self.init_std!r} must be a positive number")
        need(0.0 <= self.momentum < 1.0, f"momentum={self.momentum} must lie in [0, 1)")
        if self.optimizer == "gd":
            need(self.momentum == 0 and not self.nesterov,
                 "optimizer='gd' is plain gradient descent: use optimizer='sgd' for momentum/nesterov")
        if self.nesterov:
            need(self.momentum > 0, "nesterov=True needs momentum > 0")
        need(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
             f"betas={self.betas} must be two numbers in [0, 1)")
        need(self.eps > 0, f"eps={self.eps} must be > 0")
        need(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be ≥ 0")
        need(0.0 <= self.filter_alpha < 1.0, f"filter_alpha={self.filter_alpha} must lie in [0, 1)")
        need(self.filter_window >= 1, f"filter_window={self.filter_window} must be ≥ 1")
        need(self.log_every >= 1, f"log_every={self.log_every} must be ≥ 1")
        need(self.eval_every >= 1 and self.eval_every % self.log_every == 0,
             f"eval_every={self.eval_every} must be a positive multiple of log_every={self.log_every}")
        need(0.0 < self.grok_threshold <= 1.0,
             f"grok_threshold={self.grok_threshold} must lie in (0, 1]")
        need(isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device),
             f"device={self.device!r}: use 'cpu' or 'cuda' (or 'cuda:N', N a device number)")

    # ---------------------------------------------------------------- derived sizes
    @property
    def n_pairs(self) -> int:
        """Number of (a, b) samples of the task before the split."""
        nb = self.p - 1 if self.operation == "div" else self.p  # b ≠ 0 for division
        if self.pairs == "ordered":
            return self.p * nb
        if self.operation == "div":  # a ≤ b with b ≥ 1
            return self.p * (self.p + 1) // 2 - 1
        return self.p * (self.p + 1) // 2

    @property
    def n_train(self) -> int:
        if self.train_frac is not None:
            return round(self.train_frac * self.n_pairs)
        return self.n_pairs - self.n_test

    @property
    def d_in(self) -> int:
        """Rows of W1: p for the sum encoding, 2p for concat."""
        return self.p if self.encoding == "sum" else 2 * self.p

    @property
    def paper_lambda(self) -> float:
        """The paper's λ in L + λ‖θ‖² for this weight decay (torch convention: weight_decay = 2λ)."""
        return self.weight_decay / 2

    # ---------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **changes) -> "Config":
        """A named preset (see PRESETS), optionally with fields changed."""
        check_choice("preset", name, tuple(PRESETS))
        return cls(**{**PRESETS[name], **changes})

    def replace(self, **changes) -> "Config":
        """A copy with fields changed (validated); unknown names raise GrokfastError.

        The split is set by exactly one of train_frac and n_test: giving one a value clears the other.
        """
        _check_names(changes)
        changes = dict(changes)
        if changes.get("train_frac") is not None and "n_test" not in changes:
            changes["n_test"] = None
        if changes.get("n_test") is not None and "train_frac" not in changes:
            changes["train_frac"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A saved config. One written before the `numerics` field existed ran the host-tuned
        numerics: it loads as numerics="host", so that resuming it continues the same arithmetic."""
        _check_names(d)
        if isinstance(d, dict) and "numerics" not in d:
            d = {**d, "numerics": "host"}
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GrokfastError(f"config JSON is not valid: {e}") from None
        return cls.from_dict(d)

    def with_settings(self, assignments) -> "Config":
        """Apply 'key=value' strings (the CLI's --set) all at once, so that their order never
        matters (log_every and eval_every, train_frac and n_test); a key given twice: the last."""
        changes = {}
        for assignment in assignments:
            if "=" not in assignment:
                raise GrokfastError(f"--set {assignment!r}: write key=value, e.g. --set lr=0.5")
            key, text = (t.strip() for t in assignment.split("=", 1))
            _check_names({key: None})
            changes.pop(key, None)
            changes[key] = parse_value(key, text)
        split = [k for k in changes if k in ("train_frac", "n_test")]
        if len(split) == 2 and None not in (changes["train_frac"], changes["n_test"]):
            changes[split[0]] = None  # the later of the two sets the split
        return self.replace(**changes) if changes else self

    def with_setting(self, assignment: str) -> "Config":
        """Apply one 'key=value' string (as from the CLI's --set), parsing value by the field's type."""
        if "=" not in assignment:
            raise GrokfastError(f"--set {assignment!r}: write key=value, e.g. --set lr=0.5")
        key, text = assignment.split("=", 1)
        key = key.strip()
        _check_names({key: None})
        return self.replace(**{key: parse_value(key, text.strip())})


def field_names() -> tuple:
    return tuple(f.name for f in fields(Config))


def _check_names(d: dict) -> None:
    valid = field_names()
    for k in d:
        if k not in valid:
            raise GrokfastError(f"unknown config field {k!r}{closest(k, valid)}; "
                                f"valid fields: {', '.join(valid)}")


def parse_value(key: str, text: str) -> Any:
    """Parse a CLI string for field `key` into the field's type."""
    default = next(f.default for f in fields(Config) if f.name == key)
    low = text.lower()
    if low in ("none", "null"):
        return None
    try:
        if key == "betas":
            return tuple(float(x) for x in text.strip("()[] ").split(","))
        if isinstance(default, bool):
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(float(text)) if float(text).is_integer() else float(text)
        if isinstance(default, float) or key in ("train_frac", "init_std"):
            return float(text)
        if key == "n_test":
            return int(text)
    except ValueError:
        raise GrokfastError(f"--set {key}={text!r}: cannot read this as the type of {key} "
                            f"(default {default!r})") from None
    return text


PRESETS: dict[str, dict] = {
    # App. D of the paper: p = 11, 77 unordered pairs, 7 test, width 128, ReLU, MSE (mean), GD lr 1,
    # weight decay 1e-4, torch default init.
    "paper-real": dict(),
    # §7.3 simulation of Eq. 20: p = 37, width 512, f_s = 0.7, E ~ N(0, std p^-1/2), Euler η = 1e-3,
    # 5000 steps, float64. Used by grokfast.theory.simulate (lr is the Euler step).
    "paper-sim": dict(p=37, width=512, n_test=None, train_frac=0.7, init="normal",
                      init_std=37 ** -0.5, lr=1e-3, steps=5000, dtype="float64",
                      log_every=50, eval_every=50),
    # Gromov 2023 and its group's code: ordered pairs, concatenated one-hots, x², no bias, MSE, AdamW.
    "gromov": dict(p=97, pairs="ordered", encoding="concat", train_frac=0.3, n_test=None,
                   width=512, activation="quadratic", init="normal", loss="mse",
                   optimizer="adamw", lr=5e-3, weight_decay=1.0, betas=(0.9, 0.98),
                   steps=3000, log_every=10, eval_every=10),
    # Power et al. 2022 / Nanda et al. 2023 hyperparameters on the two-layer MLP: 30 % train,
    # ReLU, cross-entropy, AdamW lr 1e-3, wd 1, betas (0.9, 0.98).
    "power": dict(p=97, pairs="ordered", encoding="concat", train_frac=0.3, n_test=None,
                  width=512, activation="relu", loss="cross_entropy", optimizer="adamw", lr=1e-3,
                  weight_decay=1.0, betas=(0.9, 0.98), steps=20000, log_every=50, eval_every=50),
}
