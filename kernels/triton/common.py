"""Device functions and buffer layouts shared by the training-step kernels (rows, update, stats).

Nothing here launches anything: these are @triton.jit helpers inlined into the kernels of
fused.py, rows.py, update.py and stats.py, the constexpr slot
numbers of the small arrays those kernels exchange, and CODES (the one table of switch codes, from
which the kernels' named constants derive). What every launcher shares on the host (KernelSpec,
State, the launch validation) is kernels/triton/launch.py.

* Per-model hyperparameters ``hp`` [M, N_HP] float64 (slots HP_*): a batch of models with different
  lr, weight decay, betas, momentum, filter α/λ, warmup and target norm runs in one launch. Float
  scalars travel in float64 arrays, never as kernel arguments (Triton types a Python float as fp32).
* Per-tile partial sums ``part`` [M, T, N_Q] float64 (slots Q_*): every tile lies in one layer
  (tiles t < T_split cover W1, the others W2), so a per-layer total is a fixed-order sum over a
  range of tiles. Every program that needs a total recomputes it the same way: no atomics, no
  program waits on another, and the result does not depend on how many models share the launch.
* Float rounding follows torch's eager CPU kernels where the order is visible (scalar casts to the
  working dtype, lerp's two branches, addcdiv, the EMA/MA operation order of grokfast/filters.py);
  square roots and divisions are IEEE-rounded (sqrt_rn / div_rn in float32) so a GPU agrees too.
* Tile products: tl.dot (float32: IEEE, TF32 or 3×TF32 as asked; float64: IEEE, with
  out_dtype=float64, which Triton 3.6 requires for a float64 accumulator — its default float32
  out_dtype rejects one, on the GPU and in the interpreter alike). The fused kernel's float64
  products compiled for a GPU run instead as _dot_fma, an explicit loop over the inner dimension in
  ascending order (one multiply-add per element and k), chosen by ptxas's register report
  (tests/test_kernel_compile.py). Every float32 IEEE tl.dot compiles to FMAs that hold whole rows
  of both operands per thread: keep each product's inner side at 16 (the kernels' chunked loops).
  The interpreter keeps tl.dot there (the loop costs ~K interpreted ops per product); tests force
  the loop through FMA_IN_INTERPRETER.
* Loops with a runtime trip count stay `range` loops (a `while` spills more on sm_90). Triton 3.6's interpreter cannot take a runtime scalar as a `range` bound
  (it calls int() on a 1-element array, which NumPy 2 rejects); under the interpreter this module
  patches in Triton 3.9's own fix (squeeze first): launch._interpreter_scalar_index.
"""
import triton
import triton.language as tl

# hyperparameter slots of hp [M, N_HP] (float64)
HP_LR = tl.constexpr(0)
HP_WEIGHT_DECAY = tl.constexpr(1)
HP_MOMENTUM = tl.constexpr(2)
HP_NESTEROV = tl.constexpr(3)        # 1.0 or 0.0
HP_BETA1 = tl.constexpr(4)
HP_BETA2 = tl.constexpr(5)
HP_EPS = tl.constexpr(6)
HP_FILTER_ALPHA = tl.constexpr(7)
HP_FILTER_LAMB = tl.constexpr(8)
HP_WARMUP = tl.constexpr(9)          # warmup steps (0: none)
HP_LR_DIVIDE = tl.constexpr(10)      # 1.0: divide lr by 1 + λ (Grokfast's "fair comparison" switch)
HP_TARGET_NORM = tl.constexpr(11)    # fixed_norm: ‖θ_0‖
HP_GRAD_SCALE = tl.constexpr(12)     # dL/dΣℓ_i: 1/(n·p), 1/n or 1, in the loss dtype
N_HP = tl.constexpr(13)

# partial-sum slots of part [M, T, N_Q] (float64)
Q_THETA2 = tl.constexpr(0)           # Σ θ²
Q_GRAD2 = tl.constexpr(1)            # Σ g²          (g = ∇L, raw data-loss gradient)
Q_GRAD_THETA = tl.constexpr(2)       # Σ g·θ
Q_FILT_THETA = tl.constexpr(3)       # Σ g_f·θ       (g_f: after the Grokfast filter)
Q_FILT2 = tl.constexpr(4)            # Σ g_f²
Q_ORTH2 = tl.constexpr(5)            # Σ g_⊥²        (⊥Grad's projected gradient)
Q_NEW2 = tl.constexpr(6)             # Σ θ_new²      (before the fixed-norm rescale)
Q_DELTA2 = tl.constexpr(7)           # Σ (θ_{s+1} − θ_s)²
Q_DELTA_THETA = tl.constexpr(8)      # Σ (θ_{s+1} − θ_s)·θ_s
N_Q = tl.constexpr(9)
BLOCK_Q = tl.constexpr(16)          # N_Q rounded up to a power of two

# codes of the constexpr switches: the one table. A code is the name's position in its tuple;
# launchers look names up here (KernelSpec), kernels compare against the constants derived below.
CODES = {
    "activation": ("relu", "quadratic"),
    "loss": ("mse", "cross_entropy", "stablemax"),
    "optimizer": ("gd", "sgd", "adam", "adamw"),
    "grad_filter": ("none", "ema", "ma"),
}


def _codes(kind: str) -> tuple:
    """The constexpr codes of kind, in CODES order (tests/test_kernel_rows.py checks the names)."""
    return tuple(tl.constexpr(code) for code in range(len(CODES[kind])))


ACT_RELU, ACT_QUADRATIC = _codes("activation")
LOSS_MSE, LOSS_CROSS_ENTROPY, LOSS_STABLEMAX = _codes("loss")
OPT_GD, OPT_SGD, OPT_ADAM, OPT_ADAMW = _codes("optimizer")
FILTER_NONE, FILTER_EMA, FILTER_MA = _codes("grad_filter")

ORTHO_EPS = tl.constexpr(1e-30)      # ⊥Grad's ε (grokfast.filters.orthograd_)
FMA = tl.constexpr("fma")            # the PRECISION of float64 tile products compiled for a GPU


@triton.jit
def _sqrt(x):
    """IEEE-rounded square root (tl.sqrt is approximate in float32 on a GPU)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _div(a, b):
    """IEEE-rounded a / b (the float32 `/` of a GPU is approximate)."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b; PRECISION "ieee" | "tf32" | "tf32x3" (tl.dot; float64 is always IEEE) or "fma"
    (_dot_fma: the fused kernel's float64 products compiled for a GPU, see fused_precision)."""
    if PRECISION == FMA:
        return _dot_fma(a, b, acc)
    elif a.dtype == tl.float64:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _dot_fma(a, b, acc):
    """acc + a @ b without tl.dot: acc += a[:, k] ⊗ b[k, :] for k = 0, 1, … in order, one rounded
    multiply-add per element and k (as a sequential float64 GEMM). Column k of a and row k of b are
    picked out of the register tiles by a masked sum (one nonzero term: exact).
    a [M, K], b [K, N], acc [M, N]."""
    K: tl.constexpr = a.shape[1]
    ka = tl.arange(0, K)
    for k in range(K):
        a_k = tl.sum(tl.where(ka[None, :] == k, a, 0.0), 1)     # [M]
        b_k = tl.sum(tl.where(ka[:, None] == k, b, 0.0), 0)     # [N]
        acc = tl.fma(a_k[:, None], b_k[None, :], acc)
    return acc


@triton.jit
def _activate(z, ACT: tl.constexpr):
    if ACT == ACT_RELU:
        return tl.maximum(z, 0.0)
    else:  # ACT_QUADRATIC
        return z * z


@triton.jit
def _activate_backward(dh, z, ACT: tl.constexpr):
    """dL/dZ from dL/dσ(Z): relu passes where z > 0 (σ'(0) = 0); z² gives dh·z + dh·z as autograd."""
    if ACT == ACT_RELU:
        return tl.where(z > 0, dh, 0.0)
    else:  # ACT_QUADRATIC
        t = dh * z
        return t + t


@triton.jit
def _first_layer(w1_ptr, i0, i1, rmask, cols, cmask, H):
    """Z = W1[i0] + W1[i1] for a block of samples: [BLOCK_N, BLOCK_C] (0 outside the masks)."""
    m2 = rmask[:, None] & cmask[None, :]
    z0 = tl.load(w1_ptr + i0[:, None] * H + cols[None, :], mask=m2, other=0.0)
    z1 = tl.load(w1_ptr + i1[:, None] * H + cols[None, :], mask=m2, other=0.0)
    return z0 + z1


@triton.jit
def _forward_logits(w1_ptr, w2_ptr, i0, i1, rmask, cols, cmask, H, P, ACT: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    """Ŷ = σ(W1[i0] + W1[i1]) W2 for a block of samples, [BLOCK_N, BLOCK_P], summed over BLOCK_H-wide
    slices of the hidden layer in order (each slice gathered from W1 and read from W2 [H, P] in
    memory): a product's inner side stays BLOCK_H long, so its operands fit registers (an IEEE
    float32 tl.dot compiles to FMAs that hold whole rows of both operands per thread)."""
    logits = tl.zeros((BLOCK_N, BLOCK_P), w1_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        hc = h0 + tl.arange(0, BLOCK_H)
        hm = hc < H
        a = _activate(_first_layer(w1_ptr, i0, i1, rmask, hc, hm, H), ACT)  # [BLOCK_N, BLOCK_H]
        w2c = tl.load(w2_ptr + hc[:, None] * P + cols[None, :],
                      mask=hm[:, None] & cmask[None, :], other=0.0)          # [BLOCK_H, BLOCK_P]
        logits = _dot(a, w2c, logits, PRECISION)
    return logits


@triton.jit
def _row_loss(z, onehot, cmask, LOSS: tl.constexpr, LDT: tl.constexpr):
    """Per-sample loss and dℓ/dŶ (unscaled) from logits z [BLOCK_N, BLOCK_P], in loss dtype LDT.

    mse: ℓ = Σ_j (z_j − y_j)², dℓ = 2(z − y). cross_entropy: ℓ = logsumexp(z) − z_c,
    dℓ = softmax(z) − y (returned as exp(z − lse) and the one-hot separately, as autograd adds them).
    stablemax: ℓ = log Σ s(z) − log s(z_c), dℓ_j = s'(z_j)/Σ s − y_j s'(z_c)/s(z_c).
    Returns (loss [BLOCK_N], dense part [BLOCK_N, BLOCK_P], one-hot coefficient [BLOCK_N]):
    dℓ = dense − onehot·coef (coef = 0 for mse, whose dense part already includes y).
    """
    zz = z.to(LDT)
    if LOSS == LOSS_MSE:
        diff = tl.where(cmask[None, :], zz - onehot.to(LDT), 0.0)
        loss = tl.sum(diff * diff, 1)
        return loss, diff + diff, tl.zeros_like(loss)
    elif LOSS == LOSS_CROSS_ENTROPY:
        zm = tl.where(cmask[None, :], zz, float("-inf"))
        mx = tl.max(zm, 1)
        e = tl.exp(zm - mx[:, None])
        lse = mx + tl.log(tl.sum(e, 1))
        zc = tl.sum(tl.where(onehot, zz, 0.0), 1)
        return lse - zc, tl.exp(zm - lse[:, None]), tl.full(lse.shape, 1.0, LDT)
    else:  # LOSS_STABLEMAX
        neg = tl.minimum(zz, 0.0)
        sv = tl.where(zz >= 0, zz + 1.0, _div(tl.full(zz.shape, 1.0, LDT), 1.0 - neg))
        sv = tl.where(cmask[None, :], sv, 0.0)
        ds = tl.where(zz >= 0, tl.full(zz.shape, 1.0, LDT), sv * sv)
        total = tl.sum(sv, 1)
        sc = tl.sum(tl.where(onehot, sv, 0.0), 1)
        dsc = tl.sum(tl.where(onehot, ds, 0.0), 1)
        loss = tl.log(total) - tl.log(sc)
        dense = _div(tl.full(total.shape, 1.0, LDT), total)[:, None] * ds
        return loss, tl.where(cmask[None, :], dense, 0.0), _div(dsc, sc)


@triton.jit
def _correct_and_margin(z, labels, cols, cmask):
    """argmax(z) == label (first maximal index on ties) and z_c − max_{j≠c} z_j, per row."""
    c = labels[:, None]
    ninf = float("-inf")
    zc = tl.sum(tl.where(cols[None, :] == c, z, 0.0), 1)
    left = tl.max(tl.where(cols[None, :] < c, z, ninf), 1)
    right = tl.max(tl.where((cols[None, :] > c) & cmask[None, :], z, ninf), 1)
    correct = (zc > left) & (zc >= right)
    return correct, zc - tl.maximum(left, right)


@triton.jit
def _layer_totals(part_ptr, m, T, T_SPLIT, BLOCK_T: tl.constexpr):
    """Per-layer totals of every slot: (Σ_{t < T_SPLIT} part[m, t, :], Σ_{t ≥ T_SPLIT} part[m, t, :]),
    two [BLOCK_Q] float64 vectors (slots ≥ N_Q are 0), summed in a fixed order. Slot q of a total
    v is tl.sum(tl.where(tl.arange(0, BLOCK_Q) == q, v, 0.0), 0)."""
    t = tl.arange(0, BLOCK_T)
    q = tl.arange(0, BLOCK_Q)
    v = tl.load(part_ptr + (m.to(tl.int64) * T + t[:, None]) * N_Q + q[None, :],
                mask=(t < T)[:, None] & (q < N_Q)[None, :], other=0.0)  # [BLOCK_T, BLOCK_Q]
    return (tl.sum(tl.where((t < T_SPLIT)[:, None], v, 0.0), 0),
            tl.sum(tl.where((t >= T_SPLIT)[:, None], v, 0.0), 0))


@triton.jit
def _store_partials(part_ptr, m, t, T, q, a, b, c, COUNT: tl.constexpr):
    """part[m, t, q : q + COUNT] = (a, b, c)[:COUNT]: one store of up to three partial sums (pass any
    of them again as a filler when COUNT < 3)."""
    k = tl.arange(0, 4)
    v = tl.where(k == 0, a.to(tl.float64), tl.where(k == 1, b.to(tl.float64), c.to(tl.float64)))
    tl.store(part_ptr + (m.to(tl.int64) * T + t) * N_Q + q + k, v, mask=k < COUNT)


@triton.jit
def _cosine(dot, na, nb):
    """⟨a, b⟩ / (‖a‖‖b‖), 0 where either norm is 0 (grokfast.model.cosine)."""
    den = na * nb
    return tl.where(den > 0, _div(dot, tl.where(den > 0, den, 1.0)), 0.0)


@triton.jit
def _store_stats_row(out, s, train_loss, train_acc, test_loss, test_acc, t2_1, t2_2, g2_1, g2_2,
                     gt_1, gt_2, d2_1, d2_2, dt_1, dt_2, margin, DT: tl.constexpr):
    """One row of kernels/stats.STAT_COLUMNS at `out` (float64) from the step's totals: Σθ², Σg²,
    Σg·θ, Σ(Δθ)², ΣΔθ·θ per layer (_1: W1, _2: W2), in the working dtype DT as the reference."""
    n1 = _sqrt(t2_1.to(DT))
    n2 = _sqrt(t2_2.to(DT))
    norm = _sqrt(n1 * n1 + n2 * n2)
    gn1 = _sqrt(g2_1.to(DT))
    gn2 = _sqrt(g2_2.to(DT))
    gnorm = _sqrt(gn1 * gn1 + gn2 * gn2)
    upd = _sqrt(d2_1.to(DT) + d2_2.to(DT))
    tl.store(out + 0, s.to(tl.float64))
    tl.store(out + 1, train_loss.to(tl.float64))
    tl.store(out + 2, train_acc.to(tl.float64))
    tl.store(out + 3, test_loss.to(tl.float64))
    tl.store(out + 4, test_acc.to(tl.float64))
    tl.store(out + 5, n1.to(tl.float64))
    tl.store(out + 6, n2.to(tl.float64))
    tl.store(out + 7, norm.to(tl.float64))
    tl.store(out + 8, gn1.to(tl.float64))
    tl.store(out + 9, gn2.to(tl.float64))
    tl.store(out + 10, gnorm.to(tl.float64))
    tl.store(out + 11, _cosine(gt_1.to(DT), gn1, n1).to(tl.float64))
    tl.store(out + 12, _cosine(gt_2.to(DT), gn2, n2).to(tl.float64))
    tl.store(out + 13, _cosine(gt_1.to(DT) + gt_2.to(DT), gnorm, norm).to(tl.float64))
    tl.store(out + 14, upd.to(tl.float64))
    tl.store(out + 15, _cosine(-(dt_1.to(DT) + dt_2.to(DT)), upd, norm).to(tl.float64))
    tl.store(out + 16, margin.to(tl.float64))


@triton.jit
def _step_lr(hp, s):
    """Learning rate of update s (float64): linear warmup lr·min(1, (s+1)/warmup), then / (1 + λ)
    when the Grokfast lr switch is on (grokfast.reference.step_lr)."""
    lr = tl.load(hp + HP_LR)
    warm = tl.load(hp + HP_WARMUP)
    ramp = tl.minimum((s + 1).to(tl.float64) / tl.where(warm > 0, warm, 1.0), 1.0)
    lr = tl.where(warm > 0, lr * ramp, lr)
    lamb = tl.load(hp + HP_FILTER_LAMB)
    return tl.where(tl.load(hp + HP_LR_DIVIDE) != 0, lr / (1.0 + lamb), lr)


@triton.jit
def _grokfast_filter(g, offs, mask, s, hp, ema_ptr, win_ptr, D, WINDOW,
                     FILTER: tl.constexpr, FILTER_MEAN: tl.constexpr, FILTER_WARMUP: tl.constexpr):
    """g_f from g for one tile of one model (offs are flat element indices within the model).

    EMA: μ ← α·μ + (1 − α)·g with μ = g before the first step, then g_f = g + λ·μ.
    MA: push g into a ring of the last WINDOW gradients (slot s % WINDOW); once full (or always
    without warmup): g_f = g + λ·(Σ window, oldest first) / len (or the sum for filter_type "sum").
    ema_ptr / win_ptr point at this model's [D] / [WINDOW, D] state.
    """
    dt = g.dtype
    lamb = tl.load(hp + HP_FILTER_LAMB).to(dt)
    if FILTER == FILTER_EMA:
        alpha = tl.load(hp + HP_FILTER_ALPHA)
        mu = tl.load(ema_ptr + offs, mask=mask, other=0.0)
        mu = tl.where(s == 0, g, mu)
        mu = mu * alpha.to(dt) + g * (1.0 - alpha).to(dt)
        tl.store(ema_ptr + offs, mu, mask=mask)
        return g + mu * lamb
    elif FILTER == FILTER_MA:
        tl.store(win_ptr + (s % WINDOW).to(tl.int64) * D + offs, g, mask=mask)
        count = tl.minimum(s + 1, WINDOW)
        out = g
        apply = count == WINDOW
        if not FILTER_WARMUP:
            apply = count > 0
        if apply:
            total = tl.zeros_like(g)
            for k in range(count - 1):  # older gradients, oldest first; the current one last
                slot = (s - count + 1 + k) % WINDOW
                total += tl.load(win_ptr + slot.to(tl.int64) * D + offs, mask=mask, other=0.0)
            total += g
            if FILTER_MEAN:
                total = _div(total, count.to(dt))
            out = g + total * lamb
        return out
    else:  # FILTER_NONE
        return g


@triton.jit
def _optimizer_step(theta, g, offs, mask, s, hp, buf_ptr, exp_avg_ptr, exp_avg_sq_ptr,
                    OPT: tl.constexpr):
    """θ_{s+1} from θ_s and the (filtered, ⊥) gradient g, torch.optim's single-tensor formulas.

    gd/sgd: d = g + wd·θ; momentum buffer b ← d (first step) or μ·b + d; d ← b, or d + μ·b with
    nesterov; θ ← θ − lr·d. adam: d = g + wd·θ; adamw: θ ← θ·(1 − lr·wd), d = g. Then
    m ← lerp(m, d, 1 − β1), v ← β2·v + (1 − β2)·d², θ ← θ − (lr / bc1)·m / (√v / √bc2 + ε),
    bc_i = 1 − β_i^(s+1). State pointers are this model's [D] arrays (unused ones are ignored).
    """
    dt = theta.dtype
    lr = _step_lr(hp, s)
    wd = tl.load(hp + HP_WEIGHT_DECAY)
    if OPT == OPT_ADAMW:
        theta = theta * (1.0 - lr * wd).to(dt)
        d = g
    else:
        d = g + theta * wd.to(dt)
    if OPT == OPT_GD:
        return theta + d * (-lr).to(dt)
    elif OPT == OPT_SGD:
        mom = tl.load(hp + HP_MOMENTUM)
        buf = tl.load(buf_ptr + offs, mask=mask, other=0.0)
        buf = tl.where(s == 0, d, buf * mom.to(dt) + d)
        tl.store(buf_ptr + offs, buf, mask=mask)
        nesterov = tl.load(hp + HP_NESTEROV) != 0
        step_dir = tl.where(nesterov, d + buf * mom.to(dt), buf)
        step_dir = tl.where(mom != 0, step_dir, d)  # torch keeps no buffer when momentum is 0
        return theta + step_dir * (-lr).to(dt)
    else:  # OPT_ADAM, OPT_ADAMW
        b1 = tl.load(hp + HP_BETA1)
        b2 = tl.load(hp + HP_BETA2)
        eps = tl.load(hp + HP_EPS)
        t = (s + 1).to(tl.float64)
        m = tl.load(exp_avg_ptr + offs, mask=mask, other=0.0)
        v = tl.load(exp_avg_sq_ptr + offs, mask=mask, other=0.0)
        w = (1.0 - b1).to(dt)
        m = tl.where(tl.abs(w) < 0.5, m + w * (d - m), d - (d - m) * (1.0 - w))
        v = v * b2.to(dt) + (1.0 - b2).to(dt) * d * d
        tl.store(exp_avg_ptr + offs, m, mask=mask)
        tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
        bc1 = 1.0 - tl.exp(t * tl.log(b1))   # β^t (Python's β ** t); β = 0 gives exp(−inf) = 0
        bc2 = 1.0 - tl.exp(t * tl.log(b2))
        step_size = lr / bc1
        denom = _div(_sqrt(v), tl.sqrt(bc2).to(dt)) + eps.to(dt)
        return theta + (-step_size).to(dt) * _div(m, denom)


# ---- host side: the launch description and what every launcher validates
