"""Whole training steps for small models: one program per model runs K steps in one launch.

For a model whose training set, hidden layer and outputs fit one program (paper-real: 70 samples,
width 128, p = 11), everything of a step happens in one program with no launch in between:
forward (gather Z = W1[i0] + W1[i1], σ, Ŷ = σ(Z) W2 by tl.dot), loss and dL/dŶ, the test forward
at evaluation steps, backward (∇W2 = σ(Z)ᵀ dŶ, dZ = (dŶ W2ᵀ) ⊙ σ'(Z), ∇W1 = Xᵀ dZ as a tl.dot with
the one-hot Xᵀ built in registers — exact products, a fixed summation order), every statistic,
the Grokfast filter, ⊥Grad, weight decay, the optimizer and the fixed-norm rescale; then θ_{s+1}
is stored and the program moves on to step s + 1 (a barrier orders the stores before the next
step's loads). The statistics row of every step with s % log_every == 0 goes to stats
[M, rows, N_STAT] at row (s − FIRST) / LOG_EVERY. Grid: (M,), so a batch of seeds or
hyperparameters fills one SM per model.

Shapes: θ [M, D] (W1 [d_in, H] then W2 [H, P], row-major, updated in place), idx [N + N_test, 2]
int32, labels [N + N_test] int32, optimizer/filter state as in kernels/update.py, hp [M, N_HP]
float64, step / active [M] int32.

Limits: every block (samples BLOCK_N ≥ N, test samples, W1 rows, hidden, outputs) is a power of
two ≥ 16 and each 2-D tile at most MAX_TILE elements; larger models use kernels/rows.py +
kernels/update.py + kernels/stats.py. Same math and rounding conventions as those (common.py);
the summation orders differ (dot instead of segmented sum for ∇W1, one tile instead of partials),
so the two paths agree to rounding, each deterministic and independent of the batch size.
"""
import torch
import triton
import triton.language as tl

from .common import (
    FILTER_MA,
    FMA,
    HP_GRAD_SCALE,
    HP_TARGET_NORM,
    N_HP,
    ORTHO_EPS,
    _activate,
    _activate_backward,
    _correct_and_margin,
    _div,
    _dot,
    _first_layer,
    _grokfast_filter,
    _optimizer_step,
    _row_loss,
    _sqrt,
    _store_stats_row,
)
from .launch import (
    KernelSpec,
    State,
    check_precision,
    check_tensors,
    dot_block,
    fused_precision,
    launch_error,
    state_checks,
)
from .update import UpdatePlan

MAX_TILE = 128 * 128


@triton.jit
def _orthograd(g, theta):
    """⊥Grad of one whole layer: g⊥ = g − (⟨θ, g⟩ / (⟨θ, θ⟩ + ε))·θ, rescaled to ‖g‖."""
    proj = _div(tl.sum(g * theta), tl.sum(theta * theta) + ORTHO_EPS)
    g_orth = g - proj * theta
    return g_orth * _div(_sqrt(tl.sum(g * g)), _sqrt(tl.sum(g_orth * g_orth)) + ORTHO_EPS)


@triton.jit(do_not_specialize=["N_STEPS", "FIRST", "ROWS"])  # chunk lengths vary: one variant
def _fused_steps_kernel(
    theta_ptr, idx_ptr, label_ptr, ema_ptr, win_ptr, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr,
    hp_ptr, step_ptr, active_ptr, stats_ptr,
    N, N_TEST, D_IN, H, P, D, WINDOW, EVAL_EVERY, LOG_EVERY, LOSS_DIV, TEST_LOSS_DIV, N_STEPS,
    FIRST, ROWS,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr, ACT: tl.constexpr, LOSS: tl.constexpr, LOSS_F64: tl.constexpr,
    FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr, FILTER_WARMUP: tl.constexpr,
    OPT: tl.constexpr, ORTH: tl.constexpr, FIXED: tl.constexpr, PRECISION: tl.constexpr,
    N_STAT: tl.constexpr,
):
    """Grid (M,); one program owns one model: N_STEPS whole steps of its θ, state and stats rows."""
    m = tl.program_id(0)
    if tl.load(active_ptr + m) != 0:
        DT: tl.constexpr = theta_ptr.dtype.element_ty
        LDT: tl.constexpr = tl.float64 if LOSS_F64 else DT
        base = m.to(tl.int64) * D
        w1 = theta_ptr + base
        hp = hp_ptr + m * N_HP
        win = win_ptr
        if FILTER == FILTER_MA:
            win = win_ptr + base * WINDOW
        gs = tl.load(hp + HP_GRAD_SCALE).to(LDT)

        rows = tl.arange(0, BLOCK_N)
        rmask = rows < N
        i0 = tl.load(idx_ptr + 2 * rows, mask=rmask, other=0)
        i1 = tl.load(idx_ptr + 2 * rows + 1, mask=rmask, other=0)
        labels = tl.load(label_ptr + rows, mask=rmask, other=0)
        trows = N + tl.arange(0, BLOCK_T)
        tmask = trows < N + N_TEST
        ti0 = tl.load(idx_ptr + 2 * trows, mask=tmask, other=0)
        ti1 = tl.load(idx_ptr + 2 * trows + 1, mask=tmask, other=0)
        tlabels = tl.load(label_ptr + trows, mask=tmask, other=0)
        r = tl.arange(0, BLOCK_R)
        h = tl.arange(0, BLOCK_H)
        j = tl.arange(0, BLOCK_P)
        hm = h < H
        jm = j < P
        offs1 = r[:, None] * H + h[None, :]                                  # [BLOCK_R, BLOCK_H]
        mask1 = (r < D_IN)[:, None] & hm[None, :]
        offs2 = D_IN * H + h[:, None] * P + j[None, :]                       # [BLOCK_H, BLOCK_P]
        mask2 = hm[:, None] & jm[None, :]
        # Xᵀ [BLOCK_R, BLOCK_N]: 1 per symbol of each sample (2 when a = b), exact in any dtype
        xt = (tl.where((i0[None, :] == r[:, None]) & rmask[None, :], 1.0, 0.0)
              + tl.where((i1[None, :] == r[:, None]) & rmask[None, :], 1.0, 0.0)).to(DT)
        onehot = j[None, :] == labels[:, None]
        t_onehot = j[None, :] == tlabels[:, None]

        s = tl.load(step_ptr + m)
        for _ in range(N_STEPS):  # a `while` here costs ~7 KB/thread more spills on sm_90
            th1 = tl.load(w1 + offs1, mask=mask1, other=0.0)
            th2 = tl.load(theta_ptr + base + offs2, mask=mask2, other=0.0)
            a = _activate(_first_layer(w1, i0, i1, rmask, h, hm, H), ACT)   # [BLOCK_N, BLOCK_H]
            logits = _dot(a, th2, tl.zeros((BLOCK_N, BLOCK_P), DT), PRECISION)
            loss, dense, coef = _row_loss(logits, onehot, jm, LOSS, LDT)
            correct, margin = _correct_and_margin(logits, labels, j, jm)
            train_loss = _div(tl.sum(tl.where(rmask, loss, 0.0), 0), LOSS_DIV.to(LDT)).to(DT)
            train_acc = _div(tl.sum(tl.where(rmask & correct, 1.0, 0.0), 0).to(DT), N.to(DT))
            test_loss = tl.full((), float("nan"), DT)
            test_acc = tl.full((), float("nan"), DT)
            if s % EVAL_EVERY == 0:
                zt = _first_layer(w1, ti0, ti1, tmask, h, hm, H)             # [BLOCK_T, BLOCK_H]
                lt = _dot(_activate(zt, ACT), th2, tl.zeros((BLOCK_T, BLOCK_P), DT), PRECISION)
                tloss, _tdense, _tcoef = _row_loss(lt, t_onehot, jm, LOSS, LDT)
                tcorrect, _tmargin = _correct_and_margin(lt, tlabels, j, jm)
                test_loss = _div(tl.sum(tl.where(tmask, tloss, 0.0), 0),
                                 TEST_LOSS_DIV.to(LDT)).to(DT)
                test_acc = _div(tl.sum(tl.where(tmask & tcorrect, 1.0, 0.0), 0).to(DT),
                                N_TEST.to(DT))

            dl = (dense * gs - tl.where(onehot, (coef * gs)[:, None], 0.0)).to(DT)
            dl = tl.where(rmask[:, None] & jm[None, :], dl, 0.0)             # [BLOCK_N, BLOCK_P]
            # Z and σ(Z) are gathered again rather than kept alive through the loss (registers)
            z = _first_layer(w1, i0, i1, rmask, h, hm, H)
            g2 = _dot(tl.trans(_activate(z, ACT)), dl, tl.zeros((BLOCK_H, BLOCK_P), DT), PRECISION)
            dh = _dot(dl, tl.trans(th2), tl.zeros((BLOCK_N, BLOCK_H), DT), PRECISION)
            dz = _activate_backward(dh, z, ACT)
            if PRECISION == FMA:
                g1 = _dot(xt, dz, tl.zeros((BLOCK_R, BLOCK_H), DT), FMA)
            else:  # one-hot: exact in IEEE products
                g1 = _dot(xt, dz, tl.zeros((BLOCK_R, BLOCK_H), DT), "ieee")

            t2_1 = tl.sum(th1 * th1)
            t2_2 = tl.sum(th2 * th2)
            g2_1 = tl.sum(g1 * g1)
            g2_2 = tl.sum(g2 * g2)
            gt_1 = tl.sum(g1 * th1)
            gt_2 = tl.sum(g2 * th2)
            gf1 = _grokfast_filter(g1, offs1, mask1, s, hp, ema_ptr + base, win, D, WINDOW,
                                   FILTER, FILTER_MEAN, FILTER_WARMUP)
            gf2 = _grokfast_filter(g2, offs2, mask2, s, hp, ema_ptr + base, win, D, WINDOW,
                                   FILTER, FILTER_MEAN, FILTER_WARMUP)
            if ORTH:
                gf1 = _orthograd(tl.where(mask1, gf1, 0.0), th1)
                gf2 = _orthograd(tl.where(mask2, gf2, 0.0), th2)
            new1 = _optimizer_step(th1, gf1, offs1, mask1, s, hp, buf_ptr + base,
                                   exp_avg_ptr + base, exp_avg_sq_ptr + base, OPT)
            new2 = _optimizer_step(th2, gf2, offs2, mask2, s, hp, buf_ptr + base,
                                   exp_avg_ptr + base, exp_avg_sq_ptr + base, OPT)
            new1 = tl.where(mask1, new1, 0.0)
            new2 = tl.where(mask2, new2, 0.0)
            if FIXED:
                norm = _sqrt(tl.sum(new1 * new1) + tl.sum(new2 * new2))
                scale = _div(tl.full((), 1.0, DT), norm) * tl.load(hp + HP_TARGET_NORM).to(DT)
                new1 = new1 * scale
                new2 = new2 * scale
            d1 = new1 - th1
            d2 = new2 - th2
            tl.store(w1 + offs1, new1, mask=mask1)
            tl.store(theta_ptr + base + offs2, new2, mask=mask2)
            if s % LOG_EVERY == 0:
                row = (s - FIRST) // LOG_EVERY
                _store_stats_row(stats_ptr + (m.to(tl.int64) * ROWS + row) * N_STAT, s, train_loss,
                                 train_acc, test_loss, test_acc, t2_1, t2_2, g2_1, g2_2, gt_1,
                                 gt_2, tl.sum(d1 * d1), tl.sum(d2 * d2), tl.sum(d1 * th1),
                                 tl.sum(d2 * th2), tl.min(tl.where(rmask, margin, float("inf")), 0),
                                 DT)
            s += 1
            tl.debug_barrier()  # this step's stores before the next step's loads
        tl.store(step_ptr + m, s)


def fused_blocks(*, n_train: int, n_test: int, d_in: int, width: int, p: int):
    """Block sizes of the fused kernel, or None when the model does not fit one program."""
    b = dict(BLOCK_N=dot_block(n_train), BLOCK_T=dot_block(n_test), BLOCK_R=dot_block(d_in),
             BLOCK_H=dot_block(width), BLOCK_P=dot_block(p))
    tiles = (b["BLOCK_N"] * b["BLOCK_H"], b["BLOCK_T"] * b["BLOCK_H"], b["BLOCK_R"] * b["BLOCK_H"],
             b["BLOCK_H"] * b["BLOCK_P"], b["BLOCK_N"] * b["BLOCK_P"])
    return b if max(tiles) <= MAX_TILE else None


def fused_steps(spec: KernelSpec, plan: UpdatePlan, theta, idx, labels, state: State, hp, step,
                active, stats, *, n_train: int, n_steps: int, first: int, check: bool = True):
    """Launch n_steps whole training steps for every active model (θ and state updated in place).

    θ [M, plan.D]; idx [n_train + n_test, 2] and labels [n_train + n_test] int32 (training samples
    first); stats [M, ≥ cdiv(n_steps, log_every), N_STAT] float64 receives the statistics of each
    step s with s % log_every == 0 at row (s − first) / log_every; first is the first such step of
    the call (steps run from each model's device counter). Other tensors as in
    kernels/update.update_grad. GrokfastError (naming the fallback) for a model that does not fit
    one program or a bad launch; check=False skips validation.
    """
    M, D = theta.shape
    n_test = idx.shape[0] - n_train
    blocks = fused_blocks(n_train=n_train, n_test=n_test, d_in=plan.d_in, width=plan.width,
                          p=plan.p)
    if check:
        if not 0 < n_train <= idx.shape[0]:
            launch_error(f"n_train={n_train} must split the {idx.shape[0]} samples of idx into "
                         f"training and test samples")
        if blocks is None:
            launch_error(f"n_train={n_train}, width={plan.width}, p={plan.p} does not fit one "
                         f"program (tiles ≤ {MAX_TILE} elements); the tiled kernels "
                         f"(rows/update/stats) handle it")
        check_precision(spec.precision, spec.dtype, theta.device)
        check_tensors(
            theta=(theta, spec.dtype, (M, plan.D)), idx=(idx, torch.int32, (idx.shape[0], 2)),
            labels=(labels, torch.int32, (idx.shape[0],)), hp=(hp, torch.float64, (M, int(N_HP))),
            step=(step, torch.int32, (M,)), active=(active, torch.int32, (M,)),
            stats=(stats, torch.float64, (M, *stats.shape[1:])),
            **state_checks(spec, state, M, D))
        rows_needed = -(-n_steps // spec.log_every)  # the most recorded steps n_steps can hold
        if stats.shape[1] < rows_needed or first % spec.log_every:
            launch_error(f"stats has {stats.shape[1]} rows, {n_steps} steps need {rows_needed}; "
                         f"first={first} must be a multiple of log_every={spec.log_every}")
    _fused_steps_kernel[(M,)](
        theta, idx, labels, *state, hp, step, active, stats,
        n_train, n_test, plan.d_in, plan.width, plan.p, D, spec.window_slots, spec.eval_every,
        spec.log_every, spec.loss_div(n_train, plan.p), spec.loss_div(n_test, plan.p), n_steps,
        first, stats.shape[1], **blocks,
        **spec.switches("ACT", "LOSS", "LOSS_F64", "FILTER", "FILTER_MEAN", "FILTER_WARMUP", "OPT",
                        "ORTH", "FIXED"),
        PRECISION=fused_precision(spec.precision, theta.dtype), N_STAT=stats.shape[2],
        num_warps=spec.fused_warps)
