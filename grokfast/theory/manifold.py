"""The exact limiting flow on the zero-loss manifold Z = {θ : σ(X W1) W2 = Y}: dθ/dτ = −P_T θ.

P_T = I − J⁺J projects onto the tangent space null(J) of Z (J: the Jacobian of the n·p training
outputs). τ = weight_decay · lr · steps, torch's convention (grad += weight_decay·θ), the time of
Eq. 20 (grokfast.theory.flow): a GD step moves θ by −lr·weight_decay·θ plus a loss gradient normal to
Z, so in the limit weight_decay → 0 the tangent part of one step is −(lr·weight_decay) P_T θ. The
projector does not depend on the loss's scale (sum or mean MSE): only the pull back onto Z does.

Three forms of the same velocity v = −P_T θ = argmin ‖v + θ‖² subject to J v = 0:

  gram u = (J Jᵀ)⁻¹ J θ by Cholesky of the NTK Gram in closed form (n·p square), v = −θ + Jᵀu;

  cg   conjugate gradient on the NTK Gram J Jᵀ (grokfast.theory.probe.tangent_projection);
  w1   F = H W2 is linear in W2, so the constraint H dW2 = −M dW1 fixes dW2's part in range(Hᵀ) and
       the optimum is, with M dW1 = ((X dW1) ⊙ σ'(X W1)) W2, M* C = Xᵀ((C W2ᵀ) ⊙ σ'), A = (HHᵀ)⁻¹:

           dW1 = −G⁻¹ [W1 − M*(A F)],   G = I + M* A M   (G ⪰ I: CG converges fast)
           dW2 = −W2 + Hᵀ A (F − M dW1)

       On Z (F = Y) with G → I and W2 = H⁺Y this is Eq. 20 (`predicted_dW1`).

ReLU kinks. Z is only piecewise smooth: where a pre-activation z_ih = (X W1)_ih of a training pair
crosses 0, the pieces on both sides have different tangent spaces. We handle this as a Filippov
sliding mode: a pair whose velocity on its side would carry it across within the step while the
velocity of the other side (σ' flipped there) carries it back slides along the kink: its
constraint (X dW1)_ih = 0 joins J (`kinks`), and the velocity is −P θ with P the projector onto the
tangent space of that stratum of Z (the choice of σ'(0) then no longer matters: the pair's
pre-activation does not move). The held set is found by an active-set iteration to its fixed point
(`sliding_velocity`); the held rows enter the solve as a projection of dW1 (per hidden unit onto
null(X rows held)), so the Gram stays n·p square however many pairs are held. Pairs that cross
transversally just cross. The norm identity
d‖θ‖²/dτ = 2⟨θ, v⟩ = −2‖P θ‖² holds for this velocity; `simulate_manifold` checks it step by step.
"""
from __future__ import annotations

from typing import Optional

import torch

from grokfast.errors import GrokfastError
from grokfast.model import activate

from .flow import _gram_factor, activation_derivative
from .probe import TwoLayerJacobian, conjugate_gradient, tangent_projection

METHODS = ("gram", "w1", "cg")


class ManifoldPoint:
    """One model θ = (W1 [d_in, width], W2 [width, p]) with the training set X [n, d_in], Y [n, p]
    (float64): Z = X W1, H = σ(Z), S = σ'(Z), F = H W2, the Cholesky factor of HHᵀ, and the
    operators M, M*, A of the W1 form. kinks [n, width] bool: pairs held at their kink (their
    pre-activation fixed: (X dW1)_ih = 0), None for none."""

    def __init__(self, W1, W2, X, Y, activation: str, kinks: Optional[torch.Tensor] = None,
                 S: Optional[torch.Tensor] = None):
        self.W1, self.W2, self.X, self.Y, self.activation = W1, W2, X, Y, activation
        self.Z = X @ W1                                                       # [n, width]
        self.H = activate(activation, self.Z)
        self.S = activation_derivative(activation, self.Z) if S is None else S
        self.F = self.H @ W2                                                  # [n, p]
        self.L = _gram_factor(self.H, 0.0)
        self.kinks = kinks if kinks is not None and bool(kinks.any()) else None
        self._kink_proj = None if self.kinks is None else _column_projectors(X, self.kinks)

    def with_sides(self, flip: torch.Tensor) -> "ManifoldPoint":
        """The same point with σ' taken from the other side of the kink at the pairs in `flip`
        (ReLU: 1 ↔ 0), for the Filippov test."""
        return ManifoldPoint(self.W1, self.W2, self.X, self.Y, self.activation, self.kinks,
                             torch.where(flip, 1 - self.S, self.S))

    def M(self, dW1):
        return ((self.X @ dW1) * self.S) @ self.W2                            # [n, p]

    def Mt(self, C):
        return self.X.T @ ((C @ self.W2.T) * self.S)                          # [d_in, width]

    def A(self, C):
        return torch.cholesky_solve(C, self.L)                                # (HHᵀ)⁻¹ C

    def project_kinks(self, dW1):
        """dW1 with (X dW1)_ih = 0 on the held kinks: per hidden unit, onto null(X rows held)."""
        if self._kink_proj is None:
            return dW1
        return torch.einsum("hij,jh->ih", self._kink_proj, dW1)

    def theta(self):
        return torch.cat([self.W1.reshape(-1), self.W2.reshape(-1)])


def _column_projectors(X, kinks):
    """[width, d_in, d_in]: per hidden unit h, the projector onto null(X[kinks[:, h]]), from the
    eigenvectors of the held rows' d_in × d_in Gram (eigenvalues above 1e-10 of the largest span
    their row space)."""
    Xm = X[None] * kinks.T[:, :, None].to(X.dtype)                            # [width, n, d_in]
    e, V = torch.linalg.eigh(Xm.mT @ Xm)                                      # [width, d_in(, d_in)]
    span = (e > 1e-10 * e.amax(-1, keepdim=True)).to(X.dtype)
    return torch.eye(X.shape[1], dtype=X.dtype) - (V * span[:, None, :]) @ V.mT


def _velocity_w1(pt: ManifoldPoint, tol: float, maxiter: Optional[int]):
    shape = pt.W1.shape
    b = pt.project_kinks(pt.Mt(pt.A(pt.F)) - pt.W1)

    def G(x):
        x = pt.project_kinks(x.reshape(shape))
        return pt.project_kinks(x + pt.Mt(pt.A(pt.M(x)))).reshape(-1)

    x, iters, res = conjugate_gradient(G, b.reshape(-1), tol, maxiter)
    dW1 = pt.project_kinks(x.reshape(shape))
    dW2 = -pt.W2 + pt.H.T @ pt.A(pt.F - pt.M(dW1))
    return dW1, dW2, dict(cg_iters=iters, cg_residual=res)


def _velocity_cg(pt: ManifoldPoint, tol: float, maxiter: Optional[int]):
    if pt.kinks is not None:
        raise GrokfastError("method='cg' has no kink constraints: use method='w1' with kinks")
    jac = TwoLayerJacobian(pt.W1, pt.W2, pt.X, pt.activation)
    g, info = tangent_projection(jac, -pt.theta(), tol, maxiter)
    dW1, dW2 = jac.split(g)
    return dW1, dW2, dict(cg_iters=info["cg_iters"], cg_residual=info["cg_residual"])


def _velocity_gram(pt: ManifoldPoint, tol: float, maxiter: Optional[int]):
    """−P θ by Cholesky of the closed-form NTK Gram (probe's TwoLayerJacobian.gram, σ' taken from
    the point). Held kinks restrict dW1 to range(P_K) (P_K: per hidden unit h the projector P_h onto
    null(X rows held on h)), so v = −P_K θ + P_K Jᵀu with (J P_K Jᵀ) u = J P_K θ: the Gram stays
    n·p square whatever the number of held pairs (dependent ones included), and it is ⪰ HHᵀ ⊗ I:
    J P_K Jᵀ = Σ_h (X P_h Xᵀ ⊙ S_h S_hᵀ) ⊗ W2_h W2_hᵀ + HHᵀ ⊗ I (`_kink_gram`)."""
    jac = TwoLayerJacobian(pt.W1, pt.W2, pt.X, pt.activation)
    jac.S = pt.S
    theta = torch.cat([pt.project_kinks(pt.W1).reshape(-1), pt.W2.reshape(-1)])
    gram = jac.gram() if pt.kinks is None else _kink_gram(pt)
    rhs = jac.jvp(theta)
    L, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise GrokfastError("the NTK Gram J P_K Jᵀ is singular (HHᵀ is): no tangent space here")
    u = torch.cholesky_solve(rhs[:, None], L)[:, 0]
    dW1, dW2 = jac.split(-theta + jac.vjp(u))
    res = float((gram @ u - rhs).norm() / rhs.norm()) if float(rhs.norm()) > 0 else 0.0
    return pt.project_kinks(dW1), dW2, dict(cg_iters=0, cg_residual=res)


def _kink_gram(pt: ManifoldPoint) -> torch.Tensor:
    """J P_K Jᵀ [n·p, n·p] (row-major (i, c) as TwoLayerJacobian.gram)."""
    XPX = torch.einsum("ia,hab,jb->hij", pt.X, pt._kink_proj, pt.X)             # [width, n, n]
    T = XPX * pt.S.T[:, :, None] * pt.S.T[:, None, :]
    WW = pt.W2[:, :, None] * pt.W2[:, None, :]                                # [width, p, p]
    n, p = pt.F.shape
    K = (T.reshape(len(T), -1).T @ WW.reshape(len(WW), -1)).reshape(n, n, p, p)
    K = K.permute(0, 2, 1, 3).reshape(n * p, n * p)
    K += torch.kron(pt.H @ pt.H.T, torch.eye(p, dtype=K.dtype))
    return K


def point_velocity(pt: ManifoldPoint, method: str = "gram", tol: float = 1e-13,
                   maxiter: Optional[int] = None):
    """(dW1, dW2, info) = −P θ at one ManifoldPoint (its held kinks included)."""
    if method not in METHODS:
        raise GrokfastError(f"method={method!r}: use one of {METHODS}")
    return dict(gram=_velocity_gram, w1=_velocity_w1, cg=_velocity_cg)[method](pt, tol, maxiter)


def training_tensors(config, data):
    """(X, Y) of the training set, dense float64."""
    return data.X_train.to(torch.float64), data.Y_train.to(torch.float64)


def _check(config, W1, W2):
    if config.activation not in ("relu", "quadratic") or config.loss != "mse":
        raise GrokfastError(f"the manifold flow needs activation relu or quadratic and loss mse "
                            f"(got {config.activation!r}, {config.loss!r})")
    W1, W2 = (torch.as_tensor(w).detach().to("cpu", torch.float64) for w in (W1, W2))
    if W1.shape[-2:] != (config.d_in, config.width) or W2.shape[-2:] != (config.width, config.p) \
            or W1.shape[:-2] != W2.shape[:-2] or W1.dim() not in (2, 3):
        raise GrokfastError(f"need W1 [(M,) {config.d_in}, {config.width}] and W2 [(M,) "
                            f"{config.width}, {config.p}] for this config; got {tuple(W1.shape)}, "
                            f"{tuple(W2.shape)}")
    return W1, W2


def tangent_velocity(config, data, W1, W2, *, method: str = "gram", kinks=None, tol: float = 1e-13,
                     maxiter: Optional[int] = None):
    """The exact velocity −P_T θ of the zero-loss-manifold flow, (dW1, dW2) in float64.

    config: the task (activation relu or quadratic, sum or concat encoding, MSE); data: its Dataset.
    W1 [d_in, width], W2 [width, p], or a batch [M, d_in, width], [M, width, p] (one solve per model).
    method: "gram" (Cholesky of the closed-form NTK Gram JJᵀ, n·p square: the fast one at
    paper-real's size), "w1" (CG on G = I + M*AM) or "cg" (CG on JJᵀ through J, Jᵀ products; the two
    matrix-free forms). All three are −P_T θ; "cg" takes no kinks.
    kinks: [(M,) n, width] bool, ReLU pairs held at their kink (see the module docstring).
    Exact at any θ where HHᵀ is invertible (on Z or off it: J is the Jacobian of F = σ(X W1) W2).
    """
    W1, W2 = _check(config, W1, W2)
    X, Y = training_tensors(config, data)
    if W1.dim() == 2:
        pt = ManifoldPoint(W1, W2, X, Y, config.activation, kinks)
        return point_velocity(pt, method, tol, maxiter)[:2]
    out = [point_velocity(ManifoldPoint(a, b, X, Y, config.activation,
                                        None if kinks is None else kinks[i]), method, tol, maxiter)
           for i, (a, b) in enumerate(zip(W1, W2))]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def sliding_velocity(pt: ManifoldPoint, h: float, method: str = "gram", tol: float = 1e-13,
                     rounds: int = 8):
    """(dW1, dW2, info, point) at a ReLU point for a step of length h in τ: the Filippov velocity.

    An active-set iteration from the point's held kinks (pt.kinks, None: none): pairs the velocity
    would carry across their kink within h are tested with σ' of the other side; those carried back
    join the held set (sliding), the others cross. Repeated until no pair is added, at most
    `rounds` times (two solves a round). info adds n_sliding, n_crossing (pairs crossing
    transversally within h) and sliding_rounds (the rounds that added pairs).
    """
    dW1, dW2, info = point_velocity(pt, method, tol)
    if pt.activation != "relu":
        return dW1, dW2, dict(info, n_sliding=0, n_crossing=0, sliding_rounds=0), pt
    held = torch.zeros_like(pt.Z, dtype=torch.bool) if pt.kinks is None else pt.kinks.clone()
    added = 0
    for _ in range(rounds):
        dZ = pt.X @ dW1
        cross = ((pt.Z > 0) != (pt.Z + h * dZ > 0)) & ~held
        if not bool(cross.any()):
            break
        o1, _, _ = point_velocity(pt.with_sides(cross), method, tol)
        back = cross & ((pt.X @ o1) * pt.Z > 0)
        if not bool(back.any()):
            break
        held |= back
        added += 1
        pt = ManifoldPoint(pt.W1, pt.W2, pt.X, pt.Y, pt.activation, held)
        dW1, dW2, info = point_velocity(pt, method, tol)
    dZ = pt.X @ dW1
    n_cross = int((((pt.Z > 0) != (pt.Z + h * dZ > 0)) & ~held).sum())
    return dW1, dW2, dict(info, n_sliding=int(held.sum()), n_crossing=n_cross,
                          sliding_rounds=added), pt
