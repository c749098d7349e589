"""Forward and backward over blocks of samples, for M models at once: one launch per training step.

Fused per block of BLOCK_N samples of one model (grid: models × (train blocks + test blocks)):
first-layer gather Z = W1[i0] + W1[i1], activation H = σ(Z), second layer Ŷ = H W2 (tl.dot over
BLOCK_H-wide slices of the hidden layer), the per-sample loss ℓ_i and dL/dŶ, and on the way back
dL/dZ = (dL/dŶ W2ᵀ) ⊙ σ'(Z) and the block's share of ∇W2, σ(Z_b)ᵀ dL/dŶ_b (Z recomputed, never
stored; update.py sums the shares in block order, so ∇W2's product runs on as many programs as
there are blocks). Per block it also writes the partial training loss Σℓ_i, the number of
correct argmaxes and the minimum margin z_c − max_{j≠c} z_j.
Test blocks (evaluation steps only, s % eval_every == 0, read from the device step counter) write
their loss and correct count and nothing else.

Shapes (D = d_in·H + H·P, parameters flat per model: W1 [d_in, H] row-major, then W2 [H, P]):
  theta [M, D]; idx [N + N_test, 2] int32 (the two W1 rows of each sample, train then test);
  labels [N + N_test] int32; out: dz [M, N, H] and dw2 [M, NB, H, P] (gradients of the *training*
  loss), part [M, NB + NB_test, 3] float64 (loss sum in the loss dtype, correct count, min margin).
  hp [M, N_HP] float64 (HP_GRAD_SCALE = dL/dΣℓ), step and active [M] int32.

Math: mse ℓ = Σ_j (ŷ_j − y_j)²; cross_entropy ℓ = logsumexp(ŷ) − ŷ_c; stablemax
ℓ = log Σ_j s(ŷ_j) − log s(ŷ_c). With LOSS_F64 the loss and dL/dŶ are computed from float64
logits and dL/dŶ is rounded to the working dtype once (as autograd through `.double()`).

Limits: BLOCK_N, BLOCK_H ≥ 16 and BLOCK_P = next power of two ≥ max(p, 16) (tl.dot needs every
side ≥ 16 on a GPU); p ≤ 512. Deterministic: no atomics, one writer per output element.
Hidden slices of 16 (KernelSpec.rows_block_h): an IEEE float32 tl.dot compiles to FMAs holding whole
rows of both operands per thread, so its inner side sets the registers (ptxas spills none at 16).
What bounds it on an H100 (bench/cost_model.py): shared-memory bandwidth (those FMA products read
their operands through shared memory), then the FP32 pipe.
"""
import torch
import triton
import triton.language as tl

from .common import (
    HP_GRAD_SCALE,
    N_HP,
    _activate,
    _activate_backward,
    _correct_and_margin,
    _dot,
    _first_layer,
    _forward_logits,
    _row_loss,
)
from .launch import (
    MAX_BLOCK_P,
    KernelSpec,
    check_precision,
    check_tensors,
    dot_block,
    launch_error,
)


@triton.jit
def _rows_fwd_bwd_kernel(
    theta_ptr, idx_ptr, label_ptr, dz_ptr, dw2_ptr, part_ptr, hp_ptr, step_ptr, active_ptr,
    N, N_TEST, H, P, D, NB, NB_ALL, EVAL_EVERY,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, ACT: tl.constexpr,
    LOSS: tl.constexpr, LOSS_F64: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (M, NB + NB_test); one program owns one model's BLOCK_N samples: dz, ∇W2 share, part."""
    m = tl.program_id(0)
    b = tl.program_id(1)
    if tl.load(active_ptr + m) != 0:
        s = tl.load(step_ptr + m)
        train = b < NB
        if train | (s % EVAL_EVERY == 0):
            DT: tl.constexpr = theta_ptr.dtype.element_ty
            LDT: tl.constexpr = tl.float64 if LOSS_F64 else DT
            row0 = tl.where(train, b * BLOCK_N, N + (b - NB) * BLOCK_N)
            rows = row0 + tl.arange(0, BLOCK_N)
            rmask = rows < tl.where(train, N, N + N_TEST)
            i0 = tl.load(idx_ptr + 2 * rows, mask=rmask, other=0)
            i1 = tl.load(idx_ptr + 2 * rows + 1, mask=rmask, other=0)
            labels = tl.load(label_ptr + rows, mask=rmask, other=0)
            cols = tl.arange(0, BLOCK_P)
            cmask = cols < P
            w1 = theta_ptr + m.to(tl.int64) * D
            w2 = w1 + (D - H * P)

            logits = _forward_logits(w1, w2, i0, i1, rmask, cols, cmask, H, P, ACT, PRECISION,
                                     BLOCK_N, BLOCK_H, BLOCK_P)              # [BLOCK_N, BLOCK_P]

            onehot = cols[None, :] == labels[:, None]
            loss, dense, coef = _row_loss(logits, onehot, cmask, LOSS, LDT)
            correct, margin = _correct_and_margin(logits, labels, cols, cmask)
            pbase = part_ptr + (m.to(tl.int64) * NB_ALL + b) * 3
            tl.store(pbase, tl.sum(tl.where(rmask, loss, 0.0), 0).to(tl.float64))
            tl.store(pbase + 1, tl.sum(tl.where(rmask & correct, 1.0, 0.0), 0).to(tl.float64))
            tl.store(pbase + 2, tl.min(tl.where(rmask, margin, float("inf")), 0).to(tl.float64))

            if train:
                gs = tl.load(hp_ptr + m * N_HP + HP_GRAD_SCALE).to(LDT)
                m2 = rmask[:, None] & cmask[None, :]
                # autograd adds the dense part and the one-hot part as two separate gradients
                dl = (dense * gs - tl.where(onehot, (coef * gs)[:, None], 0.0)).to(DT)
                dl = tl.where(m2, dl, 0.0)  # [BLOCK_N, BLOCK_P]
                dw2 = dw2_ptr + (m.to(tl.int64) * NB + b) * H * P
                for h0 in range(0, H, BLOCK_H):
                    hc = h0 + tl.arange(0, BLOCK_H)
                    hm = hc < H
                    z = _first_layer(w1, i0, i1, rmask, hc, hm, H)  # [BLOCK_N, BLOCK_H]
                    w2c = tl.load(w2 + hc[:, None] * P + cols[None, :],
                                  mask=hm[:, None] & cmask[None, :], other=0.0)
                    dh = _dot(dl, tl.trans(w2c), tl.zeros((BLOCK_N, BLOCK_H), DT), PRECISION)
                    dz = _activate_backward(dh, z, ACT)
                    share = _dot(tl.trans(_activate(z, ACT)), dl, tl.zeros((BLOCK_H, BLOCK_P), DT),
                                 PRECISION)  # [BLOCK_H, BLOCK_P]
                    tl.store(dw2 + hc[:, None] * P + cols[None, :], share,
                             mask=hm[:, None] & cmask[None, :])
                    tl.store(dz_ptr + (m.to(tl.int64) * N + rows[:, None]) * H + hc[None, :], dz,
                             mask=rmask[:, None] & hm[None, :])


def rows_fwd_bwd(spec: KernelSpec, theta, idx, labels, dz, dw2, part, hp, step, active,
                 check: bool = True):
    """Launch the forward/backward of one step for every model; outputs are written in place.

    theta [M, D] (D = d_in·width + width·p); idx [n_train + n_test, 2] int32; labels
    [n_train + n_test] int32; dz [M, n_train, width]; dw2 [M, NB, width, p] with NB =
    cdiv(n_train, spec.rows_block_n); part [M, NB + cdiv(n_test, spec.rows_block_n), 3] float64;
    hp [M, N_HP] float64; step, active [M] int32. The sizes are read off these shapes. Bad shapes,
    dtypes or devices raise GrokfastError naming the fallback (backend="torch"); check=False skips
    this for a caller repeating a validated launch.
    """
    M, D = theta.shape
    n_train, width = dz.shape[1], dz.shape[2]
    nb, p = dw2.shape[1], dw2.shape[3]
    n_test = idx.shape[0] - n_train
    nb_all = nb + triton.cdiv(n_test, spec.rows_block_n)
    block_p = dot_block(p)
    if check:
        check_tensors(
            theta=(theta, spec.dtype, (M, D)), idx=(idx, torch.int32, (n_train + n_test, 2)),
            labels=(labels, torch.int32, (n_train + n_test,)),
            dz=(dz, spec.dtype, (M, n_train, width)),
            dw2=(dw2, spec.dtype, (M, triton.cdiv(n_train, spec.rows_block_n), width, p)),
            part=(part, torch.float64, (M, nb_all, 3)), hp=(hp, torch.float64, (M, int(N_HP))),
            step=(step, torch.int32, (M,)), active=(active, torch.int32, (M,)))
        check_precision(spec.precision, theta.dtype, theta.device)
        if D <= width * p or (D - width * p) % width:
            launch_error(f"theta has {D} entries per model, not d_in·width + width·p for "
                         f"width={width}, p={p}")
        if block_p > MAX_BLOCK_P:
            launch_error(f"p={p} > {MAX_BLOCK_P} does not fit one block of outputs")
    _rows_fwd_bwd_kernel[(M, nb_all)](
        theta, idx, labels, dz, dw2, part, hp, step, active,
        n_train, n_test, width, p, D, nb, nb_all, spec.eval_every,
        BLOCK_N=spec.rows_block_n, BLOCK_H=min(spec.rows_block_h, dot_block(width)),
        BLOCK_P=block_p, **spec.switches("ACT", "LOSS", "LOSS_F64"), PRECISION=spec.precision,
        num_warps=8)
