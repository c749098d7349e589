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

Registers, not local memory (sm_90: 64 K 32-bit registers per SM, at most 255 per thread; 8
warps give 256 threads, so a [128, 128] float32 tile alone costs 64 registers per thread, and
an IEEE float32 tl.dot compiles to FMAs that hold whole rows of both operands per thread). So no
whole-model tile is ever live; a step runs in three phases, each in fixed order:
1. chunks of BLOCK_C training samples (then test samples): Z, σ(Z), dL/dσ(Z) are [BLOCK_C, H]
   tiles; Ŷ is summed over BLOCK_HS-wide hidden slices (common._forward_logits, W2's slice read
   from memory); ∇W1 [BLOCK_R, H] and ∇W2 [H, BLOCK_P] accumulate chunk by chunk in registers;
   every product's inner side is BLOCK_C, BLOCK_HS or BLOCK_P (16 by default);
2. ∇L goes to the model's scratch row `grad`, and the update runs over flat BLOCK_E tiles of each
   layer (filter, optimizer; ⊥Grad in three passes, the fixed-norm rescale in a fourth), holding
   one tile at a time; θ_s is read from memory where needed, never held through the step;
3. the statistics row. tests/kernels/test_kernel_compile.py asserts that ptxas reports no spill.
What bounds it on an H100 (bench/cost_model.py's count of the sm_90 code, printed by
bench/gpu_check.sh --dry-run): the shared-memory bandwidth of the one SM a model runs on (an IEEE
tl.dot's operands pass through shared memory), then instruction issue; not DRAM (a model's θ,
state and scratch stay in L1/L2). One program of 8 warps per SM hides little latency and a step
chains its barriers, so a measured step will take longer than that bound.

Shapes: θ [M, D] (W1 [d_in, H] then W2 [H, P], row-major, updated in place), grad [M, D]
scratch, idx [N + N_test, 2] int32, labels [N + N_test] int32, optimizer/filter state as in
kernels/update.py, hp [M, N_HP] float64, step / active [M] int32.

Limits: every block (samples BLOCK_N ≥ N, test samples, W1 rows, hidden, outputs) is a power of
two ≥ 16 and each 2-D tile at most MAX_TILE elements; larger models use kernels/rows.py +
kernels/update.py + kernels/stats.py. Same math and rounding conventions as those (common.py);
the summation orders differ (chunked dots instead of segmented sums for ∇W1, per-tile sums
added in order), so the two paths agree to rounding, each deterministic and independent of the
batch size.
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
    _forward_logits,
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
    next_pow2,
    state_checks,
)
from .update import UpdatePlan

MAX_TILE = 128 * 128


@triton.jit
def _finish(theta, grad, offs, mask, th, new, FIXED: tl.constexpr):
    """θ_new of one flat tile (θ_s = th): into grad (fixed_norm rescales it later; returns Σθ_new²,
    0) or into θ (returns Σ(θ_new − θ_s)², Σ(θ_new − θ_s)·θ_s)."""
    if FIXED:
        tl.store(grad + offs, new, mask=mask)
        return tl.sum(new * new), tl.zeros((), new.dtype)
    else:
        d = new - th
        tl.store(theta + offs, new, mask=mask)
        return tl.sum(d * d), tl.sum(d * th)


@triton.jit
def _update_pass(theta, grad, L0, L1, proj, fac, s, hp, ema, win, buf, exp_avg, exp_avg_sq, D,
                 WINDOW, FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr,
                 FILTER_WARMUP: tl.constexpr, OPT: tl.constexpr, ORTH: tl.constexpr,
                 FIXED: tl.constexpr, PASS: tl.constexpr, BLOCK_E: tl.constexpr):
    """One pass over the flat tiles [L0, L1) of one layer (θ, the scratch grad and the state are this
    model's [D] arrays), in order; returns five sums over the layer.

    PASS 0: g = ∇L from grad; Σθ², Σg², Σg·θ; the Grokfast filter g_f (state updated); with ⊥Grad
    g_f back into grad and Σg_f·θ, Σg_f²; else the optimizer step and _finish's two sums.
    PASS 1 (⊥Grad): Σg_⊥², g_⊥ = g_f − proj·θ. PASS 2 (⊥Grad): the optimizer step on g_⊥·fac and
    _finish's sums. PASS 3 (fixed_norm): θ_{s+1} = grad·fac into θ, Σ(Δθ)², ΣΔθ·θ_s.
    """
    z = tl.zeros((), theta.dtype.element_ty)
    q0, q1, q2, q3, q4 = z, z, z, z, z
    for e0 in range(L0, L1, BLOCK_E):
        offs = e0 + tl.arange(0, BLOCK_E)
        mask = offs < L1
        th = tl.load(theta + offs, mask=mask, other=0.0)
        g = tl.load(grad + offs, mask=mask, other=0.0)
        if PASS == 0:
            q0 += tl.sum(th * th)
            q1 += tl.sum(g * g)
            q2 += tl.sum(g * th)
            gf = _grokfast_filter(g, offs, mask, s, hp, ema, win, D, WINDOW, FILTER, FILTER_MEAN,
                                  FILTER_WARMUP)
            gf = tl.where(mask, gf, 0.0)
            if ORTH:
                tl.store(grad + offs, gf, mask=mask)
                q3 += tl.sum(gf * th)
                q4 += tl.sum(gf * gf)
            else:
                new = _optimizer_step(th, gf, offs, mask, s, hp, buf, exp_avg, exp_avg_sq, OPT)
                a, b = _finish(theta, grad, offs, mask, th, tl.where(mask, new, 0.0), FIXED)
                q3 += a
                q4 += b
        elif PASS == 1:
            g_orth = g - proj * th
            q0 += tl.sum(g_orth * g_orth)
        elif PASS == 2:
            new = _optimizer_step(th, (g - proj * th) * fac, offs, mask, s, hp, buf, exp_avg,
                                  exp_avg_sq, OPT)
            a, b = _finish(theta, grad, offs, mask, th, tl.where(mask, new, 0.0), FIXED)
            q3 += a
            q4 += b
        else:
            new = g * fac
            d = new - th
            tl.store(theta + offs, new, mask=mask)
            q3 += tl.sum(d * d)
            q4 += tl.sum(d * th)
    return q0, q1, q2, q3, q4


@triton.jit
def _update_layer(theta, grad, L0, L1, s, hp, ema, win, buf, exp_avg, exp_avg_sq, D, WINDOW,
                  FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr, FILTER_WARMUP: tl.constexpr,
                  OPT: tl.constexpr, ORTH: tl.constexpr, FIXED: tl.constexpr,
                  BLOCK_E: tl.constexpr):
    """The update of one layer from g = ∇L in grad: (Σθ², Σg², Σg·θ, a, b) with (a, b) = _finish's
    sums. ⊥Grad: g⊥ = g_f − (⟨θ, g_f⟩ / (⟨θ, θ⟩ + ε))·θ, rescaled to ‖g_f‖, in three passes."""
    one = tl.full((), 1.0, theta.dtype.element_ty)
    t2, g2, gt, a, b = _update_pass(theta, grad, L0, L1, one, one, s, hp, ema, win, buf, exp_avg,
                                    exp_avg_sq, D, WINDOW, FILTER, FILTER_MEAN, FILTER_WARMUP, OPT,
                                    ORTH, FIXED, 0, BLOCK_E)
    if ORTH:
        proj = _div(a, t2 + ORTHO_EPS)
        o2, _u1, _u2, _u3, _u4 = _update_pass(theta, grad, L0, L1, proj, one, s, hp, ema, win,
                                              buf, exp_avg, exp_avg_sq, D, WINDOW, FILTER,
                                              FILTER_MEAN, FILTER_WARMUP, OPT, ORTH, FIXED, 1,
                                              BLOCK_E)
        fac = _div(_sqrt(b), _sqrt(o2) + ORTHO_EPS)
        _u0, _u1, _u2, a, b = _update_pass(theta, grad, L0, L1, proj, fac, s, hp, ema, win, buf,
                                           exp_avg, exp_avg_sq, D, WINDOW, FILTER, FILTER_MEAN,
                                           FILTER_WARMUP, OPT, ORTH, FIXED, 2, BLOCK_E)
    return t2, g2, gt, a, b


@triton.jit(do_not_specialize=["N_STEPS", "FIRST", "ROWS"])  # chunk lengths vary: one variant
def _fused_steps_kernel(
    theta_ptr, grad_ptr, idx_ptr, label_ptr, ema_ptr, win_ptr, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr,
    hp_ptr, step_ptr, active_ptr, stats_ptr,
    N, N_TEST, D_IN, H, P, D, WINDOW, EVAL_EVERY, LOG_EVERY, LOSS_DIV, TEST_LOSS_DIV, N_STEPS,
    FIRST, ROWS,
    BLOCK_C: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, ACT: tl.constexpr, LOSS: tl.constexpr,
    LOSS_F64: tl.constexpr,
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
        w2 = w1 + D_IN * H
        grad = grad_ptr + base
        hp = hp_ptr + m * N_HP
        win = win_ptr
        if FILTER == FILTER_MA:
            win = win_ptr + base * WINDOW
        gs = tl.load(hp + HP_GRAD_SCALE).to(LDT)

        r = tl.arange(0, BLOCK_R)
        h = tl.arange(0, BLOCK_H)
        j = tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C)
        hm = h < H
        jm = j < P
        offs1 = r[:, None] * H + h[None, :]                                  # [BLOCK_R, BLOCK_H]
        mask1 = (r < D_IN)[:, None] & hm[None, :]
        offs2 = D_IN * H + h[:, None] * P + j[None, :]                       # [BLOCK_H, BLOCK_P]
        mask2 = hm[:, None] & jm[None, :]

        s = tl.load(step_ptr + m)
        for _ in range(N_STEPS):  # a `while` here costs ~7 KB/thread more spills on sm_90
            th2 = tl.load(w1 + offs2, mask=mask2, other=0.0)
            # forward and backward over chunks of BLOCK_C training samples, in order: only
            # [BLOCK_C, BLOCK_H] tiles of Z, σ(Z), dL/dσ(Z) are ever live (registers, not spills)
            g1 = tl.zeros((BLOCK_R, BLOCK_H), DT)
            g2 = tl.zeros((BLOCK_H, BLOCK_P), DT)
            loss_sum = tl.zeros((), LDT)
            n_correct = tl.zeros((), tl.float32)
            margin_min = tl.full((), float("inf"), DT)
            for c0 in range(0, N, BLOCK_C):
                rows = c0 + c
                rmask = rows < N
                i0 = tl.load(idx_ptr + 2 * rows, mask=rmask, other=0)
                i1 = tl.load(idx_ptr + 2 * rows + 1, mask=rmask, other=0)
                labels = tl.load(label_ptr + rows, mask=rmask, other=0)
                onehot = j[None, :] == labels[:, None]
                logits = _forward_logits(w1, w2, i0, i1, rmask, j, jm, H, P, ACT, PRECISION,
                                         BLOCK_C, BLOCK_HS, BLOCK_P)         # [BLOCK_C, BLOCK_P]
                loss, dense, coef = _row_loss(logits, onehot, jm, LOSS, LDT)
                correct, margin = _correct_and_margin(logits, labels, j, jm)
                loss_sum += tl.sum(tl.where(rmask, loss, 0.0), 0)
                n_correct += tl.sum(tl.where(rmask & correct, 1.0, 0.0), 0)
                margin_min = tl.minimum(margin_min,
                                        tl.min(tl.where(rmask, margin, float("inf")), 0))
                dl = (dense * gs - tl.where(onehot, (coef * gs)[:, None], 0.0)).to(DT)
                dl = tl.where(rmask[:, None] & jm[None, :], dl, 0.0)         # [BLOCK_C, BLOCK_P]
                z = _first_layer(w1, i0, i1, rmask, h, hm, H)                # [BLOCK_C, BLOCK_H]
                g2 = _dot(tl.trans(_activate(z, ACT)), dl, g2, PRECISION)
                dh = _dot(dl, tl.trans(th2), tl.zeros((BLOCK_C, BLOCK_H), DT), PRECISION)
                dz = _activate_backward(dh, z, ACT)
                # Xᵀ [BLOCK_R, BLOCK_C]: 1 per symbol of each sample (2 when a = b), exact
                xt = (tl.where((i0[None, :] == r[:, None]) & rmask[None, :], 1.0, 0.0)
                      + tl.where((i1[None, :] == r[:, None]) & rmask[None, :], 1.0, 0.0)).to(DT)
                if PRECISION == FMA:
                    g1 = _dot(xt, dz, g1, FMA)
                else:  # one-hot: exact in IEEE products
                    g1 = _dot(xt, dz, g1, "ieee")
            train_loss = _div(loss_sum, LOSS_DIV.to(LDT)).to(DT)
            train_acc = _div(n_correct.to(DT), N.to(DT))
            test_loss = tl.full((), float("nan"), DT)
            test_acc = tl.full((), float("nan"), DT)
            if s % EVAL_EVERY == 0:
                tloss_sum = tl.zeros((), LDT)
                t_correct = tl.zeros((), tl.float32)
                for c0 in range(N, N + N_TEST, BLOCK_C):
                    trows = c0 + c
                    tmask = trows < N + N_TEST
                    ti0 = tl.load(idx_ptr + 2 * trows, mask=tmask, other=0)
                    ti1 = tl.load(idx_ptr + 2 * trows + 1, mask=tmask, other=0)
                    tlabels = tl.load(label_ptr + trows, mask=tmask, other=0)
                    lt = _forward_logits(w1, w2, ti0, ti1, tmask, j, jm, H, P, ACT, PRECISION,
                                         BLOCK_C, BLOCK_HS, BLOCK_P)
                    tloss, _tdense, _tcoef = _row_loss(lt, j[None, :] == tlabels[:, None], jm,
                                                       LOSS, LDT)
                    tcorrect, _tmargin = _correct_and_margin(lt, tlabels, j, jm)
                    tloss_sum += tl.sum(tl.where(tmask, tloss, 0.0), 0)
                    t_correct += tl.sum(tl.where(tmask & tcorrect, 1.0, 0.0), 0)
                test_loss = _div(tloss_sum, TEST_LOSS_DIV.to(LDT)).to(DT)
                test_acc = _div(t_correct.to(DT), N_TEST.to(DT))

            # g = ∇L to the scratch grad, then the update over flat BLOCK_E tiles of each layer
            # (registers hold one tile, not the layers): the sums' reductions order every read of
            # θ_s before the stores of θ_{s+1}
            tl.store(grad + offs1, g1, mask=mask1)
            tl.store(grad + offs2, g2, mask=mask2)
            tl.debug_barrier()
            D1 = D_IN * H
            t2_1, g2_1, gt_1, a_1, b_1 = _update_layer(
                w1, grad, 0, D1, s, hp, ema_ptr + base, win, buf_ptr + base, exp_avg_ptr + base,
                exp_avg_sq_ptr + base, D, WINDOW, FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH,
                FIXED, BLOCK_E)
            t2_2, g2_2, gt_2, a_2, b_2 = _update_layer(
                w1, grad, D1, D, s, hp, ema_ptr + base, win, buf_ptr + base, exp_avg_ptr + base,
                exp_avg_sq_ptr + base, D, WINDOW, FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH,
                FIXED, BLOCK_E)
            if FIXED:  # a = Σθ_new² per layer: rescale to ‖θ_0‖, then the update sums
                tl.debug_barrier()
                scale = (_div(tl.full((), 1.0, DT), _sqrt(a_1 + a_2))
                         * tl.load(hp + HP_TARGET_NORM).to(DT))
                _u0, _u1, _u2, a_1, b_1 = _update_pass(
                    w1, grad, 0, D1, scale, scale, s, hp, ema_ptr, win, buf_ptr, exp_avg_ptr,
                    exp_avg_sq_ptr, D, WINDOW, FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH,
                    FIXED, 3, BLOCK_E)
                _u0, _u1, _u2, a_2, b_2 = _update_pass(
                    w1, grad, D1, D, scale, scale, s, hp, ema_ptr, win, buf_ptr, exp_avg_ptr,
                    exp_avg_sq_ptr, D, WINDOW, FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH,
                    FIXED, 3, BLOCK_E)
            if s % LOG_EVERY == 0:
                row = (s - FIRST) // LOG_EVERY
                _store_stats_row(stats_ptr + (m.to(tl.int64) * ROWS + row) * N_STAT, s, train_loss,
                                 train_acc, test_loss, test_acc, t2_1, t2_2, g2_1, g2_2, gt_1,
                                 gt_2, a_1, a_2, b_1, b_2, margin_min, DT)
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


def fused_steps(spec: KernelSpec, plan: UpdatePlan, theta, grad, idx, labels, state: State, hp,
                step, active, stats, *, n_train: int, n_steps: int, first: int, check: bool = True):
    """Launch n_steps whole training steps for every active model (θ and state updated in place).

    θ [M, plan.D]; grad [M, plan.D] scratch (each step's ∇L, then g_f or θ_new); idx
    [n_train + n_test, 2] and labels [n_train + n_test] int32 (training samples
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
            theta=(theta, spec.dtype, (M, plan.D)), grad=(grad, spec.dtype, (M, plan.D)),
            idx=(idx, torch.int32, (idx.shape[0], 2)),
            labels=(labels, torch.int32, (idx.shape[0],)), hp=(hp, torch.float64, (M, int(N_HP))),
            step=(step, torch.int32, (M,)), active=(active, torch.int32, (M,)),
            stats=(stats, torch.float64, (M, *stats.shape[1:])),
            **state_checks(spec, state, M, D))
        rows_needed = -(-n_steps // spec.log_every)  # the most recorded steps n_steps can hold
        if stats.shape[1] < rows_needed or first % spec.log_every:
            launch_error(f"stats has {stats.shape[1]} rows, {n_steps} steps need {rows_needed}; "
                         f"first={first} must be a multiple of log_every={spec.log_every}")
    _fused_steps_kernel[(M,)](
        theta, grad, idx, labels, *state, hp, step, active, stats,
        n_train, n_test, plan.d_in, plan.width, plan.p, D, spec.window_slots, spec.eval_every,
        spec.log_every, spec.loss_div(n_train, plan.p), spec.loss_div(n_test, plan.p), n_steps,
        first, stats.shape[1], BLOCK_C=min(spec.fused_block_n, blocks["BLOCK_N"]),
        BLOCK_HS=min(spec.fused_block_h, blocks["BLOCK_H"]),
        BLOCK_E=min(spec.block_e, 512, next_pow2(max(plan.D1, D - plan.D1))),  # ptxas: no spill
        **{k: blocks[k] for k in ("BLOCK_R", "BLOCK_H", "BLOCK_P")},
        **spec.switches("ACT", "LOSS", "LOSS_F64", "FILTER", "FILTER_MEAN", "FILTER_WARMUP", "OPT",
                        "ORTH", "FIXED"),
        PRECISION=fused_precision(spec.precision, theta.dtype), N_STAT=stats.shape[2],
        num_warps=spec.fused_warps, num_stages=1)
