"""Config variants shared by the test files; the names say what each one exercises (they are the
test ids). Each dict maps a name to Config changes (LOOP_VARIANTS: to whole Configs;
FILTER_VARIANTS: to a step and Config changes).

STEPPER_*: the torch backend against the reference, step by step (tests/test_torch_backend.py):
tiny shapes, float64, every statistic at every step. KERNEL_*: the Triton backend against the
reference through whole runs (tests/test_triton_backend.py). LOOP_*: the run loop — resume,
checkpoints, stops — over a few optimizer and filter combinations (tests/test_longrun.py).
LOSS_, OPTIMIZER_, FILTER_ and ROWS_VARIANTS: single steps and single kernel launches
(tests/test_reference.py, tests/test_kernel_update.py, tests/test_kernel_rows.py).
"""
from grokfast import Config

# tiny shapes: p = 7 gives 28 unordered pairs (21 train / 7 test), 49 ordered ones
STEPPER_BASE = dict(p=7, width=16, n_test=7, seed=3, split_seed=1, log_every=1, eval_every=1,
                    dtype="float64")
ORDERED = dict(pairs="ordered", n_test=None, train_frac=0.6)

STEPPER_VARIANTS = {
    "mse-relu-gd": dict(),
    "mse-sum-relu-gd": dict(loss_reduction="sum", lr=0.05),
    "mse-quadratic-gd": dict(activation="quadratic", lr=0.5),
    "concat-mse-relu-gd": dict(encoding="concat", **ORDERED),
    "concat-quadratic-adamw": dict(encoding="concat", activation="quadratic", optimizer="adamw",
                                   lr=5e-3, weight_decay=1.0, betas=(0.9, 0.98), init="normal",
                                   **ORDERED),
    "ce-mean-relu-gd": dict(loss="cross_entropy", lr=0.5),
    "ce-sum-quadratic-sgd": dict(loss="cross_entropy", loss_reduction="sum", activation="quadratic",
                                 optimizer="sgd", lr=0.02, momentum=0.5),
    "stablemax-mean-gd": dict(loss="stablemax", lr=0.5),
    "stablemax-sum-adam": dict(loss="stablemax", loss_reduction="sum", optimizer="adam", lr=1e-2,
                               weight_decay=1e-3),
    "sgd-momentum": dict(optimizer="sgd", lr=0.3, momentum=0.9),
    "sgd-nesterov": dict(optimizer="sgd", lr=0.3, momentum=0.9, nesterov=True),
    "adam": dict(optimizer="adam", lr=1e-2, weight_decay=1e-2),
    "adamw": dict(optimizer="adamw", lr=1e-2, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-7),
    "warmup-gd": dict(warmup_steps=17),
    "warmup-adamw": dict(optimizer="adamw", lr=1e-2, warmup_steps=23),
    "ema": dict(grad_filter="ema", filter_alpha=0.9, filter_lamb=2.0),
    "ema-normalize-lr-adamw": dict(grad_filter="ema", filter_normalize_lr=True, optimizer="adamw",
                                   lr=1e-2),
    "ma-mean-warmup": dict(grad_filter="ma", filter_window=5, filter_lamb=3.0),
    "ma-sum-nowarmup": dict(grad_filter="ma", filter_window=4, filter_type="sum",
                            filter_warmup=False, filter_lamb=0.5, lr=0.5),
    "orthograd-sgd": dict(orthograd=True, optimizer="sgd", lr=0.3, momentum=0.9),
    "orthograd-adam": dict(orthograd=True, optimizer="adam", lr=1e-2),
    "fixed-norm": dict(fixed_norm=True, lr=2.0),
    "fixed-norm-ema-orthograd": dict(fixed_norm=True, orthograd=True, grad_filter="ema",
                                     lr=0.5),
    "eval-every-3": dict(eval_every=3),
    "init-normal-scale": dict(init="normal", init_std=0.3, init_scale=2.0, lr=0.2),
}

# the data loss and its gradient (tests/test_reference.py, by hand and by finite differences): every
# loss × activation × reduction
LOSS_VARIANTS = {f"{loss}-{act}-{red}": dict(loss=loss, activation=act, loss_reduction=red)
                 for loss in ("mse", "cross_entropy", "stablemax") for act in ("relu", "quadratic")
                 for red in ("mean", "sum")}

# one optimizer update against the formulas written out (tests/test_reference.py) and against
# torch.optim after kernels/update.py (tests/test_kernel_update.py, at steps 0 and 5)
OPTIMIZER_VARIANTS = {
    "gd": dict(optimizer="gd", lr=0.3, weight_decay=0.05),
    "sgd-momentum": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": dict(optimizer="sgd", lr=0.1, momentum=0.7, nesterov=True, weight_decay=0.02),
    "adam": dict(optimizer="adam", lr=0.01, weight_decay=0.03, betas=(0.8, 0.95)),
    "adamw": dict(optimizer="adamw", lr=0.01, weight_decay=0.5, betas=(0.9, 0.98)),
    "adamw-warmup": dict(optimizer="adamw", lr=0.01, weight_decay=0.5, warmup_steps=4),
}

# the Grokfast filters of kernels/update.py against grokfast.filters (tests/test_kernel_update.py):
# name → (step, Config changes): the first EMA step, a later one, an MA window filling and full
FILTER_VARIANTS = {
    "ema-first": (0, dict(grad_filter="ema", filter_alpha=0.9, filter_lamb=2.0)),
    "ema-later": (4, dict(grad_filter="ema", filter_alpha=0.98, filter_lamb=5.0)),
    "ma-filling": (1, dict(grad_filter="ma", filter_window=3, filter_lamb=5.0)),
    "ma-full-mean": (5, dict(grad_filter="ma", filter_window=3, filter_lamb=5.0)),
    "ma-sum-no-warmup": (1, dict(grad_filter="ma", filter_window=4, filter_lamb=0.5,
                                 filter_type="sum", filter_warmup=False)),
}

# kernels/rows.py against autograd (tests/test_kernel_rows.py): every loss × activation in both
# dtypes, and the float64 loss of a float32 model
ROWS_VARIANTS = {f"{loss}-{act}-{dtype}": dict(loss=loss, activation=act, dtype=dtype)
                 for loss in ("mse", "cross_entropy", "stablemax") for act in ("relu", "quadratic")
                 for dtype in ("float64", "float32")}
ROWS_VARIANTS["cross_entropy-relu-float32-loss64"] = dict(loss="cross_entropy", dtype="float32",
                                                         loss_dtype="float64")
ROWS_VARIANTS["stablemax-quadratic-float32-loss64"] = dict(loss="stablemax", activation="quadratic",
                                                          dtype="float32", loss_dtype="float64")

STEPS = 20
TINY = dict(p=5, width=16, n_test=5, steps=STEPS, log_every=1, eval_every=1, seed=3,
            dtype="float64")

# Together these cover every option value of the Config that changes the computation.
KERNEL_VARIANTS = {
    "gd-relu-mse-mean": dict(lr=0.5, weight_decay=0.01),
    "sgd-nesterov-quadratic-ce-sum-concat": dict(
        optimizer="sgd", momentum=0.9, nesterov=True, lr=0.02, weight_decay=0.003,
        activation="quadratic", loss="cross_entropy", loss_reduction="sum", encoding="concat"),
    "sgd-momentum-stablemax-ordered-warmup": dict(
        optimizer="sgd", momentum=0.5, lr=0.3, weight_decay=0.02, loss="stablemax",
        pairs="ordered", n_test=9, warmup_steps=6),
    "adam-ema-orthograd-ce": dict(
        optimizer="adam", lr=0.01, weight_decay=0.01, grad_filter="ema", filter_alpha=0.9,
        filter_lamb=2.0, orthograd=True, loss="cross_entropy"),
    "adamw-ma-fixednorm-lrdivide-quadratic": dict(
        optimizer="adamw", lr=0.01, weight_decay=0.5, betas=(0.9, 0.98), grad_filter="ma",
        filter_window=4, filter_lamb=3.0, filter_normalize_lr=True, fixed_norm=True,
        activation="quadratic", init="normal", init_scale=1.5),
    "gd-ma-sum-nowarmup-orthograd-fixednorm-sum": dict(
        lr=0.05, weight_decay=0.01, grad_filter="ma", filter_window=3, filter_type="sum",
        filter_warmup=False, filter_lamb=0.5, orthograd=True, fixed_norm=True,
        loss_reduction="sum", label_noise=0.3),
    "f32-gd-paper-real": dict(dtype="float32", lr=1.0, weight_decay=1e-4),
    "f32-adamw-ce-float64-loss-ema": dict(
        dtype="float32", optimizer="adamw", lr=0.01, weight_decay=1.0, betas=(0.9, 0.98),
        loss="cross_entropy", loss_dtype="float64", grad_filter="ema", filter_lamb=1.0),
    # Not fixed_norm in float32: there θ_{s+1} − θ_s is nearly orthogonal to θ_s, cos_update is a
    # cancellation (relative error ~ ulp·‖θ‖/‖Δθ‖ ≈ 1e-2 in float32, in the reference itself), so
    # fixed_norm is checked in float64 above.
    "f32-sgd-stablemax-orthograd-ma": dict(
        dtype="float32", optimizer="sgd", momentum=0.8, lr=0.1, weight_decay=0.01,
        loss="stablemax", loss_dtype="float64", orthograd=True, grad_filter="ma",
        filter_window=5, encoding="concat"),
}

LOOP_BASE = Config(p=7, width=16, n_test=5, steps=120, log_every=3, eval_every=6, seed=3)
LOOP_VARIANTS = {
    "gd": LOOP_BASE,
    "adam+ma": LOOP_BASE.replace(optimizer="adam", lr=1e-2, grad_filter="ma", filter_window=7),
    "sgd-nesterov+ema+orthograd": LOOP_BASE.replace(optimizer="sgd", momentum=0.9, nesterov=True,
                                               lr=0.3, grad_filter="ema", filter_alpha=0.9,
                                               orthograd=True),
    "adamw+fixed_norm+warmup-f64": LOOP_BASE.replace(optimizer="adamw", lr=1e-2, weight_decay=0.1,
                                                fixed_norm=True, warmup_steps=10, dtype="float64",
                                                grad_filter="ema", filter_normalize_lr=True),
}
