"""The update of one training step, for M models at once: gradients, Grokfast filters, ⊥Grad,
weight decay, the optimizer, the fixed-norm rescale and the partial sums of every statistic.

Parameters are flat per model, θ [M, D] with W1 [d_in, H] row-major in [0, D1 = d_in·H) and W2
[H, P] after it, double-buffered: a step reads θ_s from `theta` and writes θ_{s+1} to `new`, so no
program ever reads an element another program of the same launch writes.

Kernels (each a grid of models × tiles; every tile lies in one layer, and each program writes the
partial sums of its own tile into part [M, T, N_Q] float64):

* ``_update_grad_kernel`` (tiles: BLOCK_R×BLOCK_H pieces of W1, then BLOCK_HH-row pieces of W2):
  g = ∇L. For W1 a segmented sum in fixed order: dW1[r] = Σ_k dZ[table[r, k]] over the training
  rows that use input symbol r (a row twice when a = b, as X = 2·e_a); for W2 the sum, in block
  order, of the per-block shares σ(Z_b)ᵀ dŶ_b that rows.py computed (8 shares loaded at
  once, then added in order: the adds stay sequential, the L2 loads overlap). Then partial
  Σθ², Σg², Σg·θ, the Grokfast filter (EMA/MA) and — unless ⊥Grad needs the global ⟨θ, g_f⟩ first —
  the optimizer step.
* ``_update_orth_kernel`` (⊥Grad, flat tiles): g_⊥ = g_f − (⟨θ, g_f⟩ / (⟨θ, θ⟩ + ε))·θ per layer.
* ``_update_step_kernel`` (⊥Grad, flat tiles): g = g_⊥·‖g_f‖ / (‖g_⊥‖ + ε), then the optimizer.
* ``_update_rescale_kernel`` (fixed_norm, flat tiles): θ_{s+1} ← θ_new·‖θ_0‖ / ‖θ_new‖.

The step s is read from the device counter `step` [M] (so a captured CUDA graph replays any
step); inactive models (active[m] = 0) are skipped. The last kernel of a step writes the update
partials Σ(θ_{s+1} − θ_s)² and Σ(θ_{s+1} − θ_s)·θ_s. Per-layer totals are recomputed by every
program that needs them, in fixed order (common._layer_totals): deterministic, no atomics, and model
m's numbers do not depend on M.

Limits: block sizes are powers of two; no tl.dot here (∇W2's products are in rows.py).
What bounds _update_grad_kernel on an H100 (bench/cost_model.py, gromov width 512): instruction
issue (index arithmetic, the float64 scalar hyperparameter math of every program), not DRAM.
"""
import torch
import triton
import triton.language as tl

from .common import (
    BLOCK_Q,
    FILTER_MA,
    HP_TARGET_NORM,
    N_HP,
    N_Q,
    ORTHO_EPS,
    Q_DELTA2,
    Q_FILT2,
    Q_FILT_THETA,
    Q_NEW2,
    Q_ORTH2,
    Q_THETA2,
    _div,
    _grokfast_filter,
    _layer_totals,
    _optimizer_step,
    _sqrt,
    _store_partials,
)
from .launch import (
    KernelSpec,
    State,
    check_tensors,
    dot_block,
    launch_error,
    next_pow2,
    state_checks,
)


@triton.jit
def _finish_tile(theta, new, offs, mask, new_ptr, part_ptr, m, t, T, FIXED: tl.constexpr):
    """Store θ_new; partial Σθ_new² (a rescale follows) or the update partials (it was the last)."""
    tl.store(new_ptr + offs, new, mask=mask)
    if FIXED:
        new2 = tl.sum(tl.where(mask, new * new, 0.0))
        _store_partials(part_ptr, m, t, T, Q_NEW2, new2, new2, new2, 1)
    else:
        delta = tl.where(mask, new - theta, 0.0)
        d2 = tl.sum(delta * delta)
        _store_partials(part_ptr, m, t, T, Q_DELTA2, d2, tl.sum(delta * theta), d2, 2)


@triton.jit
def _grad_tile_update(g, offs, mask, m, t, T, s, hp, theta_ptr, new_ptr, grad_ptr, ema_ptr,
                      win_ptr, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr, part_ptr, D, WINDOW,
                      FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr, FILTER_WARMUP: tl.constexpr,
                      OPT: tl.constexpr, ORTH: tl.constexpr, FIXED: tl.constexpr):
    """Everything after g = ∇L for one tile (pointers already offset to model m)."""
    theta = tl.load(theta_ptr + offs, mask=mask, other=0.0)
    g = tl.where(mask, g, 0.0)
    _store_partials(part_ptr, m, t, T, Q_THETA2, tl.sum(theta * theta), tl.sum(g * g),
                    tl.sum(g * theta), 3)
    gf = _grokfast_filter(g, offs, mask, s, hp, ema_ptr, win_ptr, D, WINDOW,
                          FILTER, FILTER_MEAN, FILTER_WARMUP)
    if ORTH:
        gf = tl.where(mask, gf, 0.0)
        tl.store(grad_ptr + offs, gf, mask=mask)
        f2 = tl.sum(gf * gf)
        _store_partials(part_ptr, m, t, T, Q_FILT_THETA, tl.sum(gf * theta), f2, f2, 2)
    else:
        new = _optimizer_step(theta, gf, offs, mask, s, hp, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr,
                              OPT)
        _finish_tile(theta, new, offs, mask, new_ptr, part_ptr, m, t, T, FIXED)


@triton.jit
def _update_grad_kernel(
    theta_ptr, new_ptr, grad_ptr, dz_ptr, dw2_ptr, table_ptr,
    ema_ptr, win_ptr, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr, part_ptr, hp_ptr, step_ptr, active_ptr,
    N, NB, D_IN, H, P, D, MAXDEG, WINDOW, T, T1, NTH,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HH: tl.constexpr, BLOCK_P: tl.constexpr,
    FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr, FILTER_WARMUP: tl.constexpr,
    OPT: tl.constexpr, ORTH: tl.constexpr, FIXED: tl.constexpr,
):
    """Grid (M, TG); one program owns one model's tile t of W1 (t < T1) or W2: g, state, θ_new."""
    m = tl.program_id(0)
    t = tl.program_id(1)
    if tl.load(active_ptr + m) != 0:
        DT: tl.constexpr = theta_ptr.dtype.element_ty
        s = tl.load(step_ptr + m)
        base = m.to(tl.int64) * D
        hp = hp_ptr + m * N_HP
        win = win_ptr
        if FILTER == FILTER_MA:
            win = win_ptr + base * WINDOW
        if t < T1:
            g1, offs1, mask1 = _w1_grad_tile(dz_ptr + m.to(tl.int64) * N * H, table_ptr, t, NTH,
                                             D_IN, H, MAXDEG, DT, BLOCK_R, BLOCK_H)
            _grad_tile_update(g1, offs1, mask1, m, t, T, s, hp, theta_ptr + base, new_ptr + base,
                              grad_ptr + base, ema_ptr + base, win, buf_ptr + base,
                              exp_avg_ptr + base, exp_avg_sq_ptr + base, part_ptr, D, WINDOW,
                              FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH, FIXED)
        else:
            g2, offs2, mask2 = _w2_grad_tile(dw2_ptr + m.to(tl.int64) * NB * H * P, t - T1, NB,
                                             D_IN, H, P, DT, BLOCK_HH, BLOCK_P)
            _grad_tile_update(g2, offs2, mask2, m, t, T, s, hp, theta_ptr + base, new_ptr + base,
                              grad_ptr + base, ema_ptr + base, win, buf_ptr + base,
                              exp_avg_ptr + base, exp_avg_sq_ptr + base, part_ptr, D, WINDOW,
                              FILTER, FILTER_MEAN, FILTER_WARMUP, OPT, ORTH, FIXED)


@triton.jit
def _w1_grad_tile(dz, table_ptr, t, NTH, D_IN, H, MAXDEG, DT: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """∇W1 on tile t (rows × columns of W1) as a fixed-order segmented sum of dZ rows; dz points at
    this model's [N, H]. Returns (g, flat offsets, mask), all [BLOCK_R, BLOCK_H]."""
    r = (t // NTH) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = (t % NTH) * BLOCK_H + tl.arange(0, BLOCK_H)
    rm = r < D_IN
    hm = h < H
    g = tl.zeros((BLOCK_R, BLOCK_H), DT)
    for k in range(MAXDEG):  # the training rows that use symbol r, ascending
        row = tl.load(table_ptr + r * MAXDEG + k, mask=rm, other=-1)
        g += tl.load(dz + row[:, None] * H + h[None, :], mask=(row >= 0)[:, None] & hm[None, :],
                     other=0.0)
    return g, r[:, None] * H + h[None, :], rm[:, None] & hm[None, :]


@triton.jit
def _w2_grad_tile(dw2, u, NB, D_IN, H, P, DT: tl.constexpr, BLOCK_HH: tl.constexpr,
                  BLOCK_P: tl.constexpr):
    """∇W2 on rows [u·BLOCK_HH, (u+1)·BLOCK_HH) of W2: the per-block shares σ(Z_b)ᵀ dŶ_b of rows.py
    (dw2 points at this model's [NB, H, P]) summed in block order b = 0, 1, …, NB − 1. Returns
    (g, flat offsets, mask), all [BLOCK_HH, BLOCK_P]."""
    hh = u * BLOCK_HH + tl.arange(0, BLOCK_HH)
    j = tl.arange(0, BLOCK_P)
    mask = (hh < H)[:, None] & (j < P)[None, :]
    offs = hh[:, None] * P + j[None, :]
    share = dw2 + offs                                      # share b of this tile: share + b·H·P
    HP = H * P
    g = tl.zeros((BLOCK_HH, BLOCK_P), DT)
    # 8 independent loads in flight, then added left to right: the same sequential
    # order as one load per block, without waiting on L2 once per block
    for b in range(0, NB - NB % 8, 8):
        s0 = tl.load(share + b * HP, mask=mask, other=0.0)
        s1 = tl.load(share + (b + 1) * HP, mask=mask, other=0.0)
        s2 = tl.load(share + (b + 2) * HP, mask=mask, other=0.0)
        s3 = tl.load(share + (b + 3) * HP, mask=mask, other=0.0)
        s4 = tl.load(share + (b + 4) * HP, mask=mask, other=0.0)
        s5 = tl.load(share + (b + 5) * HP, mask=mask, other=0.0)
        s6 = tl.load(share + (b + 6) * HP, mask=mask, other=0.0)
        s7 = tl.load(share + (b + 7) * HP, mask=mask, other=0.0)
        g = g + s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7
    for b in range(NB - NB % 8, NB):
        g += tl.load(share + b * HP, mask=mask, other=0.0)
    return g, D_IN * H + offs, mask


@triton.jit
def _flat_tile(t, T1, D1, D, BLOCK_E: tl.constexpr):
    """Flat tile t: tiles t < T1 cover W1 = [0, D1), the others W2 = [D1, D)."""
    in_w1 = t < T1
    start = tl.where(in_w1, t * BLOCK_E, D1 + (t - T1) * BLOCK_E)
    offs = start + tl.arange(0, BLOCK_E)
    return offs, offs < tl.where(in_w1, D1, D), in_w1


@triton.jit
def _tile_layer_total(part_ptr, m, T, T_SPLIT, in_w1, q, BLOCK_T: tl.constexpr):
    """Total of slot q over the layer the current flat tile lies in (W1 if in_w1, else W2)."""
    tot_1, tot_2 = _layer_totals(part_ptr, m, T, T_SPLIT, BLOCK_T)
    return tl.sum(tl.where(tl.arange(0, BLOCK_Q) == q, tl.where(in_w1, tot_1, tot_2), 0.0), 0)


@triton.jit
def _update_orth_kernel(
    theta_ptr, grad_ptr, part_g_ptr, part_ptr, active_ptr,
    D, D1, TG, TG1, T, T1,
    BLOCK_E: tl.constexpr, BLOCK_TG: tl.constexpr,
):
    """Grid (M, T); one program owns one model's flat tile of BLOCK_E parameters: their g_⊥."""
    m = tl.program_id(0)
    t = tl.program_id(1)
    if tl.load(active_ptr + m) != 0:
        DT: tl.constexpr = theta_ptr.dtype.element_ty
        base = m.to(tl.int64) * D
        offs, mask, in_w1 = _flat_tile(t, T1, D1, D, BLOCK_E)
        w2 = _tile_layer_total(part_g_ptr, m, TG, TG1, in_w1, Q_THETA2, BLOCK_TG).to(DT)
        wg = _tile_layer_total(part_g_ptr, m, TG, TG1, in_w1, Q_FILT_THETA, BLOCK_TG).to(DT)
        proj = _div(wg, w2 + ORTHO_EPS)
        theta = tl.load(theta_ptr + base + offs, mask=mask, other=0.0)
        gf = tl.load(grad_ptr + base + offs, mask=mask, other=0.0)
        g_orth = tl.where(mask, gf - proj * theta, 0.0)
        tl.store(grad_ptr + base + offs, g_orth, mask=mask)
        orth2 = tl.sum(g_orth * g_orth)
        _store_partials(part_ptr, m, t, T, Q_ORTH2, orth2, orth2, orth2, 1)


@triton.jit
def _update_step_kernel(
    theta_ptr, new_ptr, grad_ptr, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr,
    part_g_ptr, part_o_ptr, part_ptr, hp_ptr, step_ptr, active_ptr,
    D, D1, TG, TG1, T, T1,
    BLOCK_E: tl.constexpr, BLOCK_TG: tl.constexpr, BLOCK_T: tl.constexpr,
    OPT: tl.constexpr, FIXED: tl.constexpr,
):
    """Grid (M, T); one program owns one model's flat tile of BLOCK_E parameters: their θ_new."""
    m = tl.program_id(0)
    t = tl.program_id(1)
    if tl.load(active_ptr + m) != 0:
        DT: tl.constexpr = theta_ptr.dtype.element_ty
        s = tl.load(step_ptr + m)
        base = m.to(tl.int64) * D
        offs, mask, in_w1 = _flat_tile(t, T1, D1, D, BLOCK_E)
        f2 = _tile_layer_total(part_g_ptr, m, TG, TG1, in_w1, Q_FILT2, BLOCK_TG).to(DT)
        o2 = _tile_layer_total(part_o_ptr, m, T, T1, in_w1, Q_ORTH2, BLOCK_T).to(DT)
        scale = _div(_sqrt(f2), _sqrt(o2) + ORTHO_EPS)
        theta = tl.load(theta_ptr + base + offs, mask=mask, other=0.0)
        g = tl.load(grad_ptr + base + offs, mask=mask, other=0.0) * scale
        new = _optimizer_step(theta, g, offs, mask, s, hp_ptr + m * N_HP, buf_ptr + base,
                              exp_avg_ptr + base, exp_avg_sq_ptr + base, OPT)
        _finish_tile(theta, new, offs, mask, new_ptr + base, part_ptr, m, t, T, FIXED)


@triton.jit
def _update_rescale_kernel(
    theta_ptr, new_ptr, part_prev_ptr, part_ptr, hp_ptr, active_ptr,
    D, D1, TP, TP1, T, T1,
    BLOCK_E: tl.constexpr, BLOCK_TP: tl.constexpr,
):
    """Grid (M, T); one program owns one model's flat tile of BLOCK_E parameters: θ_new rescaled."""
    m = tl.program_id(0)
    t = tl.program_id(1)
    if tl.load(active_ptr + m) != 0:
        DT: tl.constexpr = theta_ptr.dtype.element_ty
        base = m.to(tl.int64) * D
        offs, mask, in_w1 = _flat_tile(t, T1, D1, D, BLOCK_E)
        q = tl.arange(0, BLOCK_Q)
        tot_1, tot_2 = _layer_totals(part_prev_ptr, m, TP, TP1, BLOCK_TP)
        n2_1 = tl.sum(tl.where(q == Q_NEW2, tot_1, 0.0), 0)
        n2_2 = tl.sum(tl.where(q == Q_NEW2, tot_2, 0.0), 0)
        norm = _sqrt(n2_1.to(DT) + n2_2.to(DT))
        # reference: target / norm, which torch evaluates as norm.reciprocal() * target
        target = tl.load(hp_ptr + m * N_HP + HP_TARGET_NORM).to(DT)
        scale = _div(tl.full((), 1.0, DT), norm) * target
        theta = tl.load(theta_ptr + base + offs, mask=mask, other=0.0)
        new = tl.load(new_ptr + base + offs, mask=mask, other=0.0) * scale
        _finish_tile(theta, new, offs, mask, new_ptr + base, part_ptr, m, t, T, False)


class UpdatePlan:
    """The parameter layout of one problem shape (W1 [d_in, width], then W2 [width, p]) and the
    tiles of the update kernels over it at a spec's block sizes (host side)."""

    def __init__(self, spec: KernelSpec, *, d_in: int, width: int, p: int):
        self.d_in, self.width, self.p = d_in, width, p
        self.D1, self.D = d_in * width, d_in * width + width * p
        self.block_r = min(spec.block_r, next_pow2(d_in))
        self.block_h = min(spec.block_h, next_pow2(width))
        self.block_hh = min(spec.block_hh, next_pow2(width))
        self.block_p = dot_block(p)
        self.block_e = min(spec.block_e, next_pow2(max(self.D1, self.D - self.D1)))
        self.nth = triton.cdiv(width, self.block_h)
        self.tg1 = triton.cdiv(d_in, self.block_r) * self.nth
        self.tg = self.tg1 + triton.cdiv(width, self.block_hh)
        self.te1 = triton.cdiv(self.D1, self.block_e)
        self.te = self.te1 + triton.cdiv(self.D - self.D1, self.block_e)


def update_grad(spec: KernelSpec, plan: UpdatePlan, theta, new, grad, dz, dw2, table, state: State,
                part, hp, step, active, check: bool = True):
    """Launch ∇L + filter (+ optimizer unless spec.orthograd) for every model.

    theta, new [M, D]; grad [M, D] (⊥Grad: receives g_f; else may be empty); dz
    [M, n_train, width]; dw2 [M, NB, width, p] (rows.py's per-block shares of ∇W2); table
    [d_in, maxdeg] int32 (−1 padded); state as KernelSpec.uses says; part [M, plan.tg, N_Q]
    float64. The sizes are read off these shapes and the plan. check=False skips the validation
    (GrokfastError naming the fallback) for a caller repeating a validated launch.
    """
    M, D = theta.shape
    dt = spec.dtype
    n_train, nb = dz.shape[1], dw2.shape[1]
    if check:
        check_tensors(
            theta=(theta, dt, (M, plan.D)), new=(new, dt, (M, plan.D)),
            dz=(dz, dt, (M, n_train, plan.width)), dw2=(dw2, dt, (M, nb, plan.width, plan.p)),
            table=(table, torch.int32, (plan.d_in, table.shape[1])),
            part=(part, torch.float64, (M, plan.tg, int(N_Q))),
            hp=(hp, torch.float64, (M, int(N_HP))),
            step=(step, torch.int32, (M,)), active=(active, torch.int32, (M,)),
            **({"grad": (grad, dt, (M, plan.D))} if spec.orthograd else {}),
            **state_checks(spec, state, M, plan.D))
        if int(table.max()) >= n_train:
            launch_error(f"table refers to training row {int(table.max())} of {n_train}")
    _update_grad_kernel[(M, plan.tg)](
        theta, new, grad, dz, dw2, table, *state, part, hp, step, active,
        n_train, nb, plan.d_in, plan.width, plan.p, plan.D, table.shape[1], spec.window_slots,
        plan.tg, plan.tg1, plan.nth,
        BLOCK_R=plan.block_r, BLOCK_H=plan.block_h, BLOCK_HH=plan.block_hh, BLOCK_P=plan.block_p,
        **spec.switches("FILTER", "FILTER_MEAN", "FILTER_WARMUP", "OPT", "ORTH", "FIXED"),
        num_warps=8)


def update_orth(plan: UpdatePlan, theta, grad, part_g, part_o, active, check: bool = True):
    """⊥Grad's projection for every model: grad ← g_f − proj·θ in place; part_o [M, plan.te, N_Q]."""
    M = theta.shape[0]
    if check:
        check_tensors(theta=(theta, theta.dtype, (M, plan.D)),
                      grad=(grad, theta.dtype, (M, plan.D)),
                      part_g=(part_g, torch.float64, (M, plan.tg, int(N_Q))),
                      part_o=(part_o, torch.float64, (M, plan.te, int(N_Q))),
                      active=(active, torch.int32, (M,)))
    _update_orth_kernel[(M, plan.te)](
        theta, grad, part_g, part_o, active, plan.D, plan.D1, plan.tg, plan.tg1, plan.te, plan.te1,
        BLOCK_E=plan.block_e, BLOCK_TG=next_pow2(plan.tg))


def update_step(spec: KernelSpec, plan: UpdatePlan, theta, new, grad, state: State, part_g, part_o,
                part, hp, step, active, check: bool = True):
    """⊥Grad's rescale and the optimizer for every model (after update_orth); part [M, plan.te, N_Q]."""
    M, dt = theta.shape[0], spec.dtype
    if check:
        check_tensors(theta=(theta, dt, (M, plan.D)), new=(new, dt, (M, plan.D)),
                      grad=(grad, dt, (M, plan.D)),
                      part_g=(part_g, torch.float64, (M, plan.tg, int(N_Q))),
                      part_o=(part_o, torch.float64, (M, plan.te, int(N_Q))),
                      part=(part, torch.float64, (M, plan.te, int(N_Q))),
                      hp=(hp, torch.float64, (M, int(N_HP))), step=(step, torch.int32, (M,)),
                      active=(active, torch.int32, (M,)), **state_checks(spec, state, M, plan.D))
    _update_step_kernel[(M, plan.te)](
        theta, new, grad, state.buf, state.exp_avg, state.exp_avg_sq, part_g, part_o, part, hp,
        step, active, plan.D, plan.D1, plan.tg, plan.tg1, plan.te, plan.te1,
        BLOCK_E=plan.block_e, BLOCK_TG=next_pow2(plan.tg), BLOCK_T=next_pow2(plan.te),
        **spec.switches("OPT", "FIXED"))


def update_rescale(spec: KernelSpec, plan: UpdatePlan, theta, new, part_prev, part, hp, active,
                   check: bool = True):
    """Fixed norm for every model: new ← new·‖θ_0‖/‖new‖ in place. part_prev holds Σθ_new² from the
    preceding kernel: update_step's [M, plan.te, N_Q] with spec.orthograd, else update_grad's
    [M, plan.tg, N_Q]; part [M, plan.te, N_Q]."""
    M, dt = theta.shape[0], spec.dtype
    tp, tp1 = (plan.te, plan.te1) if spec.orthograd else (plan.tg, plan.tg1)
    if check:
        check_tensors(theta=(theta, dt, (M, plan.D)), new=(new, dt, (M, plan.D)),
                      part_prev=(part_prev, torch.float64, (M, tp, int(N_Q))),
                      part=(part, torch.float64, (M, plan.te, int(N_Q))),
                      hp=(hp, torch.float64, (M, int(N_HP))), active=(active, torch.int32, (M,)))
    _update_rescale_kernel[(M, plan.te)](
        theta, new, part_prev, part, hp, active, plan.D, plan.D1, tp, tp1, plan.te, plan.te1,
        BLOCK_E=plan.block_e, BLOCK_TP=next_pow2(tp))
