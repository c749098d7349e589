"""⊥Grad and the fixed-norm rescale on one model's row, for the native chunk loop (loop.py): the
torch backend's portable operations (grokfast/backends/torch/stats.py, orthograd_ and
fixed_norm_ with `fixed`) in the same order, so the bits are the same.

    orthograd_layer   one layer's w, g:  proj = ⟨w, g⟩ / (Σ w·w + ε);  g⊥ = g − w·proj;
                      scale = √(Σ g·g) / (√(Σ g⊥·g⊥) + ε);  g ← g⊥·scale
    fixed_norm        θ ← θ·((1 / √(Σ W1·W1 + Σ W2·W2))·target)   over the whole row [S]

Each sum is loop_stats._dot (products rounded first, summed in reduce.row_sums' eight-lane order:
grokfast.numerics.row_sum's kernel), every other operation one IEEE rounding in the working dtype
(no FMA: no fastmath), each square root `math.sqrt` (libm's sqrt / sqrtf, IEEE's correctly
rounded root), a division by zero IEEE's ±inf / NaN as torch's (error_model "numpy").
Shapes: w, g [n] (a layer's slice of θ and of the gradient);  t [S] (θ's row, W1 = [:P1],
W2 = [P1:P]);  prod [1, L] (L ≥ P) and acc [1] scratch of the working dtype;  eps, target, zero:
scalars of the working dtype.  Limits: CPU; float32 or float64.
"""
from __future__ import annotations

import math

from numba import njit

from .loop_stats import _dot


@njit(cache=True, nogil=True, error_model="numpy")
def orthograd_layer(w, g, eps, prod, acc, zero):
    proj = _dot(w, g, prod, acc, zero) / (_dot(w, w, prod, acc, zero) + eps)
    g_norm = math.sqrt(_dot(g, g, prod, acc, zero))
    for i in range(g.shape[0]):
        g[i] = g[i] - w[i] * proj                      # g⊥, in place (g's sums are taken)
    scale = g_norm / (math.sqrt(_dot(g, g, prod, acc, zero)) + eps)
    for i in range(g.shape[0]):
        g[i] = g[i] * scale


@njit(cache=True, nogil=True, error_model="numpy")
def fixed_norm(t, P1, P, target, one, prod, acc, zero):
    norm = math.sqrt(_dot(t[:P1], t[:P1], prod, acc, zero) + _dot(t[P1:P], t[P1:P], prod, acc,
                                                                     zero))
    factor = (one / norm) * target
    for i in range(t.shape[0]):
        t[i] = t[i] * factor
