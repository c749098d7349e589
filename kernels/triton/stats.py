"""The statistics row of one training step, for M models at once (grid: models), and the step count.

Reduces, in fixed order, the partial sums the step's other kernels wrote and stores one row of
STAT_COLUMNS per model into the preallocated float64 buffer stats [M, K, N_STATS] at row ROW, then
advances the model's device step counter s → s + 1 (the step's last launch does it, so a captured
CUDA graph of K steps needs no host involvement).

Inputs: part_rows [M, NB + NB_test, 3] (rows.py: loss sum in the loss dtype, correct count, min
margin per block of samples); part_g [M, TG, N_Q] (update.py's gradient kernel: Σθ², Σg², Σg·θ per
tile, tiles < TG1 in W1); part_u [M, TU, N_Q] (the step's last update kernel: Σ(θ_{s+1} − θ_s)² and
Σ(θ_{s+1} − θ_s)·θ_s, tiles < TU1 in W1).

Math (grokfast.model.STAT_NAMES, computed in the working dtype DT as the reference does):
train_loss = Σℓ / LOSS_DIV (n·p or n for "mean", 1 for "sum", in the loss dtype), train_acc =
correct / n, ‖W1‖ = √Σθ², ‖θ‖ = √(‖W1‖² + ‖W2‖²), likewise the gradient norms, cos(∇L, θ) per
layer and total (0 where a norm is 0), update_norm = ‖θ_{s+1} − θ_s‖, cos_update =
cos(θ_{s+1} − θ_s, −θ_s), min_margin = min over training samples. Test loss/accuracy at
evaluation steps (s % eval_every == 0), NaN otherwise.
"""
import torch
import triton
import triton.language as tl

from .common import (
    BLOCK_Q,
    N_Q,
    Q_DELTA2,
    Q_DELTA_THETA,
    Q_GRAD2,
    Q_GRAD_THETA,
    Q_THETA2,
    _div,
    _layer_totals,
    _store_stats_row,
)
from .launch import KernelSpec, check_tensors, launch_error, next_pow2
from .update import UpdatePlan

STAT_COLUMNS = (
    "step", "train_loss", "train_acc", "test_loss", "test_acc", "norm_W1", "norm_W2", "norm",
    "grad_norm_W1", "grad_norm_W2", "grad_norm", "cos_grad_W1", "cos_grad_W2", "cos_grad",
    "update_norm", "cos_update", "min_margin",
)
N_STATS = len(STAT_COLUMNS)


# ROW and K (the chunk's step count) vary with the chunk length: without do_not_specialize a new
# length (208 after 200) may need a new variant, which cannot compile during CUDA-graph capture
@triton.jit(do_not_specialize=["ROW", "K"])
def _stats_kernel(
    part_rows_ptr, part_g_ptr, part_u_ptr, step_ptr, active_ptr, stats_ptr,
    NB, NB_ALL, TG, TG1, TU, TU1, N, N_TEST, LOSS_DIV, TEST_LOSS_DIV, EVAL_EVERY, ROW, K,
    DT: tl.constexpr, LDT: tl.constexpr, N_STAT: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_TG: tl.constexpr, BLOCK_TU: tl.constexpr,
):
    """Grid (M,); one program owns one model: its stats row ROW and its step counter."""
    m = tl.program_id(0)
    if tl.load(active_ptr + m) != 0:
        s = tl.load(step_ptr + m)
        b = tl.arange(0, BLOCK_B)
        rp = part_rows_ptr + m.to(tl.int64) * NB_ALL * 3
        is_train = b < NB
        is_test = (b >= NB) & (b < NB_ALL)
        loss_b = tl.load(rp + 3 * b, mask=b < NB_ALL, other=0.0).to(LDT)           # [BLOCK_B]
        correct_b = tl.load(rp + 3 * b + 1, mask=b < NB_ALL, other=0.0)
        margin_b = tl.load(rp + 3 * b + 2, mask=is_train, other=float("inf"))
        train_loss = _div(tl.sum(tl.where(is_train, loss_b, 0.0), 0), LOSS_DIV.to(LDT)).to(DT)
        train_acc = _div(tl.sum(tl.where(is_train, correct_b, 0.0), 0).to(DT), N.to(DT))
        evaluate = s % EVAL_EVERY == 0
        test_loss = _div(tl.sum(tl.where(is_test, loss_b, 0.0), 0), TEST_LOSS_DIV.to(LDT)).to(DT)
        test_loss = tl.where(evaluate, test_loss, float("nan"))
        test_acc = _div(tl.sum(tl.where(is_test, correct_b, 0.0), 0).to(DT), N_TEST.to(DT))
        test_acc = tl.where(evaluate, test_acc, float("nan"))

        q = tl.arange(0, BLOCK_Q)
        g_1, g_2 = _layer_totals(part_g_ptr, m, TG, TG1, BLOCK_TG)       # [BLOCK_Q] per layer
        u_1, u_2 = _layer_totals(part_u_ptr, m, TU, TU1, BLOCK_TU)
        t2_1 = tl.sum(tl.where(q == Q_THETA2, g_1, 0.0), 0)
        t2_2 = tl.sum(tl.where(q == Q_THETA2, g_2, 0.0), 0)
        g2_1 = tl.sum(tl.where(q == Q_GRAD2, g_1, 0.0), 0)
        g2_2 = tl.sum(tl.where(q == Q_GRAD2, g_2, 0.0), 0)
        gt_1 = tl.sum(tl.where(q == Q_GRAD_THETA, g_1, 0.0), 0)
        gt_2 = tl.sum(tl.where(q == Q_GRAD_THETA, g_2, 0.0), 0)
        d2_1 = tl.sum(tl.where(q == Q_DELTA2, u_1, 0.0), 0)
        d2_2 = tl.sum(tl.where(q == Q_DELTA2, u_2, 0.0), 0)
        dt_1 = tl.sum(tl.where(q == Q_DELTA_THETA, u_1, 0.0), 0)
        dt_2 = tl.sum(tl.where(q == Q_DELTA_THETA, u_2, 0.0), 0)
        _store_stats_row(stats_ptr + (m.to(tl.int64) * K + ROW) * N_STAT, s, train_loss, train_acc,
                         test_loss, test_acc, t2_1, t2_2, g2_1, g2_2, gt_1, gt_2, d2_1, d2_2, dt_1,
                         dt_2, tl.min(margin_b, 0), DT)
        tl.store(step_ptr + m, s + 1)


def stats_row(spec: KernelSpec, plan: UpdatePlan, stats, row: int, part_rows, part_g, part_u, step,
              active, *, n_train: int, n_test: int, check: bool = True):
    """Launch the statistics of one step into stats[:, row] (stats [M, K, N_STATS] float64) and
    advance every active model's step counter. part_rows [M, NB + NB_test, 3] with NB =
    cdiv(n_train, spec.rows_block_n); part_g [M, plan.tg, N_Q]; part_u the step's last update
    partials: part_g itself, or [M, plan.te, N_Q] after ⊥Grad or the fixed-norm rescale.
    check=False skips the validation (GrokfastError naming the fallback)."""
    M, K = stats.shape[0], stats.shape[1]
    nb_all = part_rows.shape[1]
    nb = triton.cdiv(n_train, spec.rows_block_n)
    tu, tu1 = (plan.te, plan.te1) if spec.orthograd or spec.fixed_norm else (plan.tg, plan.tg1)
    if check:
        if nb_all != nb + triton.cdiv(n_test, spec.rows_block_n):
            launch_error(f"part_rows has {nb_all} blocks, expected "
                         f"{nb} + {triton.cdiv(n_test, spec.rows_block_n)}")
        if not 0 <= row < K:
            launch_error(f"row {row} outside the stats buffer of {K} rows")
        check_tensors(stats=(stats, torch.float64, (M, K, N_STATS)),
                      part_rows=(part_rows, torch.float64, (M, nb_all, 3)),
                      part_g=(part_g, torch.float64, (M, plan.tg, int(N_Q))),
                      part_u=(part_u, torch.float64, (M, tu, int(N_Q))),
                      step=(step, torch.int32, (M,)), active=(active, torch.int32, (M,)))
    dt = tl.float64 if spec.dtype == torch.float64 else tl.float32
    _stats_kernel[(M,)](
        part_rows, part_g, part_u, step, active, stats,
        nb, nb_all, plan.tg, plan.tg1, tu, tu1, n_train, n_test, spec.loss_div(n_train, plan.p),
        spec.loss_div(n_test, plan.p), spec.eval_every, row, K,
        DT=dt, LDT=tl.float64 if spec.loss_f64 else dt, N_STAT=N_STATS,
        BLOCK_B=next_pow2(nb_all), BLOCK_TG=next_pow2(plan.tg), BLOCK_TU=next_pow2(tu))
