"""A chunk of full-batch training steps of many small models in one native call: the CPU twin of the
fused Triton kernel, for the torch backend's portable numerics.

Fused, per model m listed in `models` and per step k of the chunk, with no Python in between:

    W2ᵀ, Z = X W1, H = σ(Z), Ŷ = H W2     grad.w2_transpose, grad.forward_rows (fma.forward_product)
    dŶ = (Ŷ − Y)·scale                    update._mse_grad_kernel (MSE, mean or sum by `scale`)
    or cross-entropy / stablemax          loop_loss.loss_grad (exp and log written in the source)
    ∇W2, dZ = dH ⊙ σ'(Z), ∇W1            grad.backward_w2, backward_hidden, backward_w1
    on logged steps: the statistics' sums, the test forward and metrics on eval steps  loop_stats
    Grokfast EMA or MA on g               loop_filters (grad_filters.py's operations)
    ⊥Grad on each layer                   loop_norms.orthograd_layer (stats.orthograd_'s order)
    g ← g + wd·θ;  θ ← θ + (−lr_k)·g      update._gd_step_kernel (GD with coupled weight decay)
    or SGD with momentum / Nesterov       _sgd_step (torch.optim.SGD's order, as optim.SGD)
    or Adam / AdamW                       adam.adam_range (the per-step path's own kernel)
    θ ← θ·(target / ‖θ‖)                  loop_norms.fixed_norm (stats.fixed_norm_'s order)

With plain GD (no filter, ⊥Grad, momentum, Adam or fixed norm) W2ᵀ is transposed from θ once a
call and then carried: the GD step's operations applied to W2ᵀ with ∇W2ᵀ (_gd_w2t), the same
values, so the same bits as transposing the updated θ.

Every stage is the very @njit function the per-step path calls (kernels/cpu/grad.py, update.py,
adam.py) or its operations in the same order (loop_stats.py, loop_filters.py, loop_norms.py),
called on the same model's rows in the same order, so each model's bits are those of the per-step
path by construction; models are independent, so running all steps of one model before the next
(its θ and buffers stay in cache) changes no bit. The logged steps' statistics are reduced here
(loop_stats.py, the per-step path's operations and row_sums' order) into the chunk's rows; the
caller forms the roots and cosines from those sums for all rows at once.

Shapes (as kernels/cpu/grad.py; S the row stride of θ, P1 = d_in·w):
    theta, grad [M, S];  i0, i1, labels [N] int64;  order, starts: segment.sample_order(i0, i1,
    P1 // w);  neg_lr [K, M] (−lr of each of the K steps);
    wd [M];  SGD: momentum [M], nesterov [M] bool, steps_before [M] int64, buf [M, S];
    Z, H, dH [M, N, w];  w2t, g2t [M, p, w];  logits, dlogits [M, N, p].  zero and scale: numpy
    scalars of the working dtype;
    rows [R, n_stats, M] float64 (mse_chunk for the statistics' arguments).

Limits: CPU; float32 or float64; σ = ReLU or x²; MSE, cross-entropy or stablemax; GD, SGD, Adam
or AdamW; no filter, EMA or MA; ⊥Grad and fixed norm or not; one thread per call (callers run
shards of models on threads; nogil).
"""
from __future__ import annotations

from numba import njit

from .adam import adam_range
from .grad import backward_hidden, backward_w1, backward_w2, forward_rows, w2_transpose
from .loop_filters import ema_filter, ma_filter
from .loop_norms import fixed_norm as fixed_norm_row
from .loop_norms import orthograd_layer
from .loop_loss import loss_grad
from .loop_stats import stats_after, stats_before, test_metrics
from .update import _gd_step_kernel


NONE, EMA, MA = 0, 1, 2                  # filt's kind


@njit(cache=True, nogil=True)
def _gd_w2t(w2t, g2t, neg_lr, wd):
    """W2ᵀ after a GD step: update._gd_step_kernel itself on W2ᵀ and ∇W2ᵀ [p, w] (w2t[j, k] is
    θ's W2[k, j], g2t[j, k] the gradient's, exact copies: the same operations on the same values,
    so the bits of a transpose of the updated θ; g2t is left holding g + wd·W2ᵀ, as grad is)."""
    n = w2t.size
    _gd_step_kernel(w2t.reshape((1, n)), g2t.reshape((1, n)), neg_lr, wd, n)


@njit(cache=True, nogil=True)
def _sgd_step(t, g, buf, neg_lr, wd, any_wd, use_momentum, momentum, nesterov, first):
    """One torch.optim.SGD update of one model's row in the per-step path's portable operation
    order (grokfast/backends/torch/optim.py, SGD): g ← g + θ·wd (when any model of the launch
    has weight decay); buf ← buf·m + g, or g at the model's first step; direction buf, or
    buf·m + g with Nesterov (g alone when no model of the launch has momentum, buf untouched);
    θ ← θ + direction·(−lr). One IEEE rounding per operation, no FMA."""
    for i in range(t.shape[0]):
        gi = g[i]
        if any_wd:
            gi = gi + t[i] * wd
            g[i] = gi
        d = gi
        if use_momentum:
            b = gi if first else buf[i] * momentum + gi
            buf[i] = b
            d = b * momentum + gi if nesterov else b
        t[i] = t[i] + d * neg_lr


@njit(cache=True, nogil=True)
def _chunk_kernel(models, theta, grad, i0, i1, labels, order, starts, P1, quadratic, zero,
                  scale, neg_lr, wd, sgd, any_wd, use_momentum, momentum, nesterov, steps_before,
                  buf, Z, H, dH, w2t, g2t, logits, dlogits,
                  step0, log_every, eval_every, P, div, test, theta0, prod, acc, cols, rows,
                  filt, loss, opt, done):
    N, w, p, S = Z.shape[1], Z.shape[2], logits.shape[2], theta.shape[1]
    (adam, bc2_sqrt, decay, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, eps,
     decoupled, orthograd, ortho_eps, fixed_norm, target) = opt
    ti0, ti1, tlabels, tdiv, tZ, tH, tlogits = test
    kind, ema, alpha, one_minus_alpha, lamb, filtered, ring, ring_pos, warmup, mean = filt
    W = ring.shape[0]
    one = scale / scale
    # plain GD, nothing else touching g or θ: W2ᵀ for the next step by the update itself (_gd_w2t)
    carry = kind == NONE and not (orthograd or adam or sgd or fixed_norm)
    for m in models:
        r = 0
        for k in range(neg_lr.shape[0]):
            s = step0 + k
            logged = s % log_every == 0
            if k == 0 or not carry:
                w2_transpose(theta[m], P1, p, w2t[m])
            forward_rows(m, theta, i0, i1, P1, quadratic, zero, Z, H, logits, 0, N)
            loss_grad(loss, logits[m], labels, scale, dlogits[m])
            backward_w2(m, P1, dlogits, H, g2t, grad, 0, p)
            backward_hidden(m, quadratic, dlogits, w2t, Z, H, dH, 0, N)
            backward_w1(m, order, starts, quadratic, dH, grad, 0, w)
            if logged:
                stats_before(m, s, theta[m], grad[m], logits[m], labels, P1, P, div, loss,
                             one, zero, prod, acc, cols, rows[r])
                if s % eval_every == 0:
                    forward_rows(m, theta, ti0, ti1, P1, quadratic, zero, tZ, tH, tlogits, 0,
                                 tZ.shape[1])
                    test_metrics(m, tlogits[m], tlabels, tdiv, loss, one, zero, prod, acc,
                                 cols, rows[r])
                theta0[0, :P] = theta[m, :P]
            if kind == EMA:
                ema_filter(grad[m], ema[m], alpha[m], one_minus_alpha[m], lamb[m],
                           filtered[m] + k == 0)
            elif kind == MA:
                ma_filter(grad[m], ring[:, m], (ring_pos + k) % W, min(filtered[m] + k + 1, W),
                          warmup, mean, lamb[m], one, zero, theta0[1])
            if orthograd:
                orthograd_layer(theta[m, :P1], grad[m, :P1], ortho_eps, prod, acc, zero)
                orthograd_layer(theta[m, P1:P], grad[m, P1:P], ortho_eps, prod, acc, zero)
            if adam:
                adam_range(theta[m], grad[m], exp_avg[m], exp_avg_sq[m], 0, S, neg_lr[k, m],
                           bc2_sqrt[k, m], decay[k, m], wd[m], one_minus_beta1[m], beta2[m],
                           one_minus_beta2[m], eps[m], decoupled, any_wd)
            elif sgd:
                _sgd_step(theta[m], grad[m], buf[m], neg_lr[k, m], wd[m], any_wd, use_momentum,
                          momentum[m], nesterov[m], steps_before[m] + k == 0)
            else:
                _gd_step_kernel(theta[m:m + 1], grad[m:m + 1], neg_lr[k, m:m + 1],
                                wd[m:m + 1], S)
                if carry:
                    _gd_w2t(w2t[m], g2t[m], neg_lr[k, m:m + 1], wd[m:m + 1])
            if fixed_norm:
                fixed_norm_row(theta[m], P1, P, target[m], one, prod, acc, zero)
            if logged:
                stats_after(m, theta[m], theta0[0], theta0[1], P1, P,
                            zero, prod, acc, cols, rows[r])
                r += 1
    done[0] = neg_lr.shape[0]


def mse_chunk(models, theta, grad, i0, i1, labels, order, starts, P1, quadratic, zero, scale,
              neg_lr, wd, sgd, any_wd, use_momentum, momentum, nesterov, steps_before, buf,
              Z, H, dH, w2t, g2t, logits, dlogits,
              step0, log_every, eval_every, P, div, test, theta0, prod, acc, cols, rows,
              filt, loss, opt, done) -> None:
    """Advance the models listed in `models` (int64 indices) by neg_lr.shape[0] steps of
    full-batch GD (sgd False: update._gd_step_kernel) or SGD (sgd True: _sgd_step with the
    launch-wide flags any_wd, use_momentum, per-model momentum [M], nesterov [M] bool, the
    model's steps before this call steps_before [M] int64 and its momentum buffer buf [M, S]),
    in place (module docstring for the other shapes); the other models' rows are left as they
    are. neg_lr, wd and momentum are C-contiguous arrays of the working dtype.

    Steps step0 + k that are multiples of log_every write their statistics (loop_stats) into
    rows[r, :, m] (rows [R, n_stats, M] float64, r counting the logged steps of the call; cols:
    loop_stats.COLUMNS' indices in a row), those that are multiples of eval_every the test
    metrics too. P = d_in·w + w·p; div: the MSE's divisor (N·p for the mean, 1 for the sum) and
    test = (i0, i1, labels, div, Z, H, logits) of the test set (forward_rows' buffers);
    theta0 [2, S] scratch (θ before a logged update, and the update), prod [1, L] with
    L ≥ max(S, N·p, n_test·p) and acc [1] scratch of the working dtype.

    filt = (kind, ema [M, S], α [M], 1 − α [M], λ [M], filtered [M] int64, ring [W, M, S],
    ring_pos, warmup, mean): the gradient filter between the statistics and the update
    (loop_filters; kind NONE, EMA or MA; filtered: the model's filtered steps before this call;
    ring_pos: the MA ring's slot for the call's first step; arrays a kind does not use may be
    any of the right type). loss = (kind, mean, g, one, zero, zl, el, al): the data loss
    (loop_loss; kind MSE with `scale` and `div`, or CROSS_ENTROPY or STABLEMAX with scratch
    zl [≥ n, p], el [2, ≥ n, p], al [≥ n] of the loss dtype, n = max(N, n_test)).
    opt = (adam, bc2_sqrt [K, M], decay [K, M], exp_avg [M, S],
    exp_avg_sq [M, S], 1 − β1 [M], β2 [M], 1 − β2 [M], ε [M], decoupled, orthograd, ortho_eps,
    fixed_norm, target [M]): with adam, Adam (decoupled False; weight decay on g where any_wd)
    or AdamW (adam.adam_range) replaces GD / SGD, neg_lr then holding −lr/(1 − β1ᵗ) and
    bc2_sqrt, decay (1 − lr·wd) the other per-step scalars of the optimizer's schedule; with
    orthograd, ⊥Grad (loop_norms, ε ortho_eps) on each layer between the filter and the update;
    with fixed_norm, θ rescaled to target after it (arrays a switch does not use may be any of
    the right type). done [1] int64: set to the number of steps as the call's last act
    (the caller can tell whether it ran when an interrupt surfaces around the call)."""
    _chunk_kernel(models, theta, grad, i0, i1, labels, order, starts, P1, quadratic, zero,
                  scale, neg_lr, wd, sgd, any_wd, use_momentum, momentum, nesterov, steps_before,
                  buf, Z, H, dH, w2t, g2t, logits, dlogits,
                  step0, log_every, eval_every, P, div, test, theta0, prod, acc, cols, rows,
                  filt, loss, opt, done)
