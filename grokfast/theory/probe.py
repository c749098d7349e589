"""The alignment probe of App. D: do real GD updates follow the norm-minimizing tangent of Z?

At step t, with Δθ = θ_t − θ_{t−c} (c = `lag`, default 10):

    θ'  = 100 GD steps from θ_t on the training loss, no weight decay (lr 1, momentum 0.9): ≈ proj_Z(θ_t)
    J   = ∂F/∂θ at θ', F the n·p training outputs (n·p × d)
    g̃   = (I − J⁺J)(−θ_t) = −θ_t − Jᵀ u,   (J Jᵀ) u = J(−θ_t)          (J⁺ = Jᵀ(JJᵀ)⁻¹; JJᵀ: the NTK Gram)

and the probe records cos(Δθ, g̃), the distance ‖θ_t − θ'‖, the residual training loss L(θ'), and
σ_min(J) = √λ_min(JJᵀ), the smallest singular value of J as a map onto the n·p outputs (0 whenever
n·p > d). Everything is matrix-free: J and Jᵀ act through Jacobian-vector products (the two-layer
net's closed form, or torch.func for any function), the solve is conjugate gradient on JJᵀ
(preconditioned, for the two-layer net, by its class-averaged n×n NTK block), and
σ_min comes from the dense Gram's eigenvalues when n·p ≤ dense_limit, else from Lanczos (an upper
bound on λ_min that tightens with the number of iterations). The probe computes in float64 on copies:
it never touches the training run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from grokfast.config import Config
from grokfast.data import Dataset, make_dataset
from grokfast.errors import GrokfastError
from grokfast.model import activate, data_loss

from .flow import activation_derivative


class FunctionJacobian:
    """J of any f: R^d → R^m (outputs flattened) at θ, applied through torch.func.jvp / vjp."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor):
        self.f, self.theta = f, theta.detach()
        out, self._vjp = torch.func.vjp(f, self.theta)
        self.out_shape = out.shape
        self.dim_in, self.dim_out = self.theta.numel(), out.numel()

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(self.f, (self.theta,), (v,))[1].reshape(-1)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u.reshape(self.out_shape))[0].reshape(-1)

    def gram(self) -> torch.Tensor:
        """JJᵀ [m, m], from the dense Jacobian (small problems only)."""
        J = torch.func.jacrev(self.f)(self.theta).reshape(self.dim_out, self.dim_in)
        return J @ J.T


class TwoLayerJacobian:
    """J of the training outputs F = σ(X W1) W2 ∈ R^{n×p} w.r.t. θ = (vec W1, vec W2), closed form.

    J(dW1, dW2) = ((X dW1) ⊙ σ'(Z)) W2 + H dW2;   Jᵀ C = (Xᵀ((C W2ᵀ) ⊙ σ'(Z)), Hᵀ C)
    with Z = X W1, H = σ(Z), X [n, d_in] the dense training inputs (Dataset.X_train): its products
    cost n·d_in·width, the order of the H·W2 ones. Flattening is row-major (output (i, c) at i·p + c;
    θ = [W1.flatten(), W2.flatten()]).
    """

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor, X: torch.Tensor, activation: str):
        self.W1, self.W2, self.X = W1, W2, X
        Z = X @ W1                                                            # [n, width]
        self.H, self.S = activate(activation, Z), activation_derivative(activation, Z)
        self.n, self.p = Z.shape[0], W2.shape[1]
        self.dim_in, self.dim_out = W1.numel() + W2.numel(), self.n * self.p

    def split(self, v: torch.Tensor):
        k = self.W1.numel()
        return v[:k].reshape(self.W1.shape), v[k:].reshape(self.W2.shape)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        dW1, dW2 = self.split(v)
        return (((self.X @ dW1) * self.S) @ self.W2 + self.H @ dW2).reshape(-1)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        C = u.reshape(self.n, self.p)
        gW1 = self.X.T @ ((C @ self.W2.T) * self.S)
        return torch.cat([gW1.reshape(-1), (self.H.T @ C).reshape(-1)])

    def _XXt(self) -> torch.Tensor:
        """X Xᵀ [n, n]: the number of input rows two samples share."""
        return self.X @ self.X.T

    def gram(self) -> torch.Tensor:
        """JJᵀ [n·p, n·p]: δ_cc'(HHᵀ)_ij + (XXᵀ)_ij Σ_h S_ih W2_hc S_jh W2_hc' (the empirical NTK)."""
        D = (self.S[:, None, :] * self.W2.T[None]).reshape(self.dim_out, -1)      # [n·p, width]
        ones = torch.ones(self.p, self.p, dtype=D.dtype)
        eye = torch.eye(self.p, dtype=D.dtype)
        return (D @ D.T) * torch.kron(self._XXt(), ones) + torch.kron(self.H @ self.H.T, eye)

    def preconditioner(self) -> Optional[Callable]:
        """u ↦ (K̄ ⊗ I_p)⁻¹ u with K̄ = HHᵀ + (XXᵀ) ⊙ (S diag(mean_c W2_hc²) Sᵀ) [n, n]: the NTK's
        diagonal class blocks averaged over the classes, one n×n Cholesky factor. None when K̄ is
        singular to working precision."""
        K = self.H @ self.H.T + self._XXt() * ((self.S * (self.W2 ** 2).mean(1)) @ self.S.T)
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) != 0:
            return None
        return lambda u: torch.cholesky_solve(u.reshape(self.n, self.p), L).reshape(-1)


def conjugate_gradient(matvec: Callable, b: torch.Tensor, tol: float = 1e-10,
                       maxiter: Optional[int] = None, precond: Optional[Callable] = None):
    """Solve A x = b for symmetric positive semi-definite A (b in its range) from x = 0, optionally
    preconditioned by precond(r) ≈ A⁻¹ r (symmetric positive definite).

    Stops when ‖b − A x‖ ≤ tol·‖b‖ or after maxiter (default 2·len(b)) iterations.
    Returns (x, iterations, ‖b − A x‖ / ‖b‖).
    """
    maxiter = 2 * b.numel() if maxiter is None else maxiter
    precond = precond or (lambda r: r)
    x = torch.zeros_like(b)
    bnorm = float(b.norm())
    if bnorm == 0:
        return x, 0, 0.0
    r = b.clone()
    z = precond(r)
    d = z.clone()
    rz = float(r @ z)
    it = 0
    while it < maxiter and float(r.norm()) > tol * bnorm:
        Ad = matvec(d)
        dAd = float(d @ Ad)
        if dAd <= 0:  # d in the null space: the remaining residual is outside A's range
            break
        a = rz / dAd
        x.add_(d, alpha=a)
        r.sub_(Ad, alpha=a)
        z = precond(r)
        rz_new = float(r @ z)
        d.mul_(rz_new / rz).add_(z)
        rz = rz_new
        it += 1
    return x, it, float((b - matvec(x)).norm()) / bnorm


def tangent_projection(jac, v: torch.Tensor, tol: float = 1e-10, maxiter: Optional[int] = None,
                       precondition: bool = True):
    """(I − J⁺J) v, the projection of v onto null(J) = the tangent space of Z, matrix-free.

    jac: an operator with jvp / vjp (TwoLayerJacobian, FunctionJacobian). J⁺J v = Jᵀu with (JJᵀ)u = Jv,
    solved by conjugate gradient, preconditioned by jac.preconditioner() where the operator has one
    (the two-layer net's class-averaged NTK block). Returns (projected v, info dict: cg_iters,
    cg_residual, tangent_residual = ‖J·result‖ / ‖J v‖).
    """
    Jv = jac.jvp(v)
    precond = jac.preconditioner() if precondition and hasattr(jac, "preconditioner") else None
    u, iters, res = conjugate_gradient(lambda w: jac.jvp(jac.vjp(w)), Jv, tol, maxiter, precond)
    g = v - jac.vjp(u)
    jn = float(Jv.norm())
    return g, dict(cg_iters=iters, cg_residual=res,
                   tangent_residual=float(jac.jvp(g).norm()) / jn if jn > 0 else 0.0)


def lanczos_min_eigenvalue(matvec: Callable, dim: int, iters: int = 100, seed: int = 0,
                           dtype=torch.float64) -> float:
    """Smallest Ritz value of a symmetric operator after `iters` Lanczos steps (full
    reorthogonalization, start vector from a private generator): an upper bound on λ_min."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=gen, dtype=dtype)
    Q = [q / q.norm()]
    alphas, betas = [], []
    for j in range(min(iters, dim)):
        w = matvec(Q[j])
        alphas.append(float(Q[j] @ w))
        Qm = torch.stack(Q, 1)
        for _ in range(2):  # twice is enough (Kahan)
            w = w - Qm @ (Qm.T @ w)
        b = float(w.norm())
        if b <= 1e-13 * max(abs(a) for a in alphas) or j == min(iters, dim) - 1:
            break
        betas.append(b)
        Q.append(w / b)
    T = torch.diag(torch.tensor(alphas, dtype=dtype))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=dtype)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(T)[0])


def sigma_min(jac, dense_limit: int = 2048, lanczos_iters: int = 100) -> float:
    """σ_min(J) = √λ_min(JJᵀ): exact eigenvalues of the Gram when n·p ≤ dense_limit, else Lanczos."""
    if jac.dim_out <= dense_limit:
        lam = float(torch.linalg.eigvalsh(jac.gram())[0])
    else:
        lam = lanczos_min_eigenvalue(lambda w: jac.jvp(jac.vjp(w)), jac.dim_out, lanczos_iters)
    return math.sqrt(max(lam, 0.0))


def project_to_zero_loss(grad_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                         steps: int = 100, lr: float = 1.0, momentum: float = 0.9) -> torch.Tensor:
    """θ' ≈ proj_Z(θ): `steps` of GD with heavy-ball momentum on the loss whose gradient is grad_fn
    (no weight decay), in torch.optim.SGD's convention (b ← μ·b + g, first b = g; θ ← θ − lr·b)."""
    th = theta.detach().clone()
    buf = None
    for _ in range(steps):
        g = grad_fn(th)
        buf = g if buf is None else buf.mul_(momentum).add_(g)
        th = th - lr * buf
    return th


@dataclass
class Alignment:
    """One probe reading. cos: cos(Δθ, g̃); dist: ‖θ − θ'‖; residual: training loss at θ';
    sigma_min: σ_min(J) at θ'; norm: ‖θ‖; cg_iters / cg_residual / tangent_residual: the solve's
    iterations, relative residual, and ‖J g̃‖/‖Jθ‖; tangent: g̃ (flat, float64) if requested."""

    cos: float
    dist: float
    residual: float
    sigma_min: float
    norm: float
    cg_iters: int
    cg_residual: float
    tangent_residual: float
    tangent: Optional[torch.Tensor] = None


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def align_flat(loss_fn: Callable, grad_fn: Callable, make_jacobian: Callable,
               theta_prev: torch.Tensor, theta: torch.Tensor, *, gd_steps: int = 100, gd_lr: float = 1.0,
               gd_momentum: float = 0.9, cg_tol: float = 1e-10, cg_maxiter: Optional[int] = None,
               dense_limit: int = 2048, lanczos_iters: int = 100,
               return_tangent: bool = False) -> Alignment:
    """The probe on flat parameter vectors: loss_fn(θ) the training loss, grad_fn(θ) its gradient,
    make_jacobian(θ') the Jacobian operator of the training outputs at θ'. Used by `alignment` and
    `alignment_generic`."""
    theta, theta_prev = theta.detach().double().reshape(-1), theta_prev.detach().double().reshape(-1)
    theta_z = project_to_zero_loss(grad_fn, theta, gd_steps, gd_lr, gd_momentum)
    nan = float("nan")
    if not torch.isfinite(theta_z).all():  # the projection diverged: nothing else is meaningful
        return Alignment(nan, nan, nan, nan, float(theta.norm()), 0, nan, nan)
    jac = make_jacobian(theta_z)
    g, info = tangent_projection(jac, -theta, cg_tol, cg_maxiter)
    return Alignment(cos=_cos(theta - theta_prev, g), dist=float((theta - theta_z).norm()),
                     residual=float(loss_fn(theta_z)),
                     sigma_min=sigma_min(jac, dense_limit, lanczos_iters),
                     norm=float(theta.norm()), tangent=g if return_tangent else None, **info)


def alignment_generic(outputs_fn: Callable, target: torch.Tensor, theta_prev: torch.Tensor,
                      theta: torch.Tensor, **kwargs) -> Alignment:
    """The probe for any model: outputs_fn(θ flat) → the training outputs, Z = {outputs = target},
    training loss Σ (outputs − target)² (summed squared error). kwargs as align_flat."""
    target = target.double()

    def loss_fn(th):
        return ((outputs_fn(th) - target) ** 2).sum()

    return align_flat(loss_fn, torch.func.grad(loss_fn), lambda th: FunctionJacobian(outputs_fn, th),
                      theta_prev, theta, **kwargs)


def _pair(theta) -> tuple:
    if isinstance(theta, dict):
        theta = (theta["W1"], theta["W2"])
    if not isinstance(theta, (tuple, list)) or len(theta) != 2:
        raise GrokfastError("parameters must be (W1, W2) or a dict with 'W1' and 'W2' "
                            "(e.g. Result.params)")
    return tuple(torch.as_tensor(t).detach().to("cpu", torch.float64) for t in theta)


def alignment(config: Config, data: Optional[Dataset], theta_prev, theta, *, gd_steps: int = 100,
              gd_lr: float = 1.0, gd_momentum: float = 0.9, cg_tol: float = 1e-10,
              cg_maxiter: Optional[int] = None, dense_limit: int = 2048, lanczos_iters: int = 100,
              return_tangent: bool = False) -> Alignment:
    """The App. D probe on saved parameters of the two-layer net.

    theta_prev = θ_{t−c}, theta = θ_t: (W1 [d_in, width], W2 [width, p]) or dicts with W1, W2 (e.g.
    Result.params). data: the config's dataset (None: make_dataset(config)). θ' takes gd_steps of GD
    (lr gd_lr, momentum gd_momentum, no weight decay) on the training loss in config.loss /
    config.loss_reduction; J is the closed-form Jacobian of the n·p training outputs at θ'; g̃ comes
    from conjugate gradient on JJᵀ (tolerance cg_tol); σ_min(J) from the dense Gram when
    n·p ≤ dense_limit, else lanczos_iters Lanczos steps. Computed in float64 on the CPU.
    """
    data = make_dataset(config) if data is None else data
    (P1, P2), (W1, W2) = _pair(theta_prev), _pair(theta)
    if W1.shape != (config.d_in, config.width) or W2.shape != (config.width, config.p) \
            or P1.shape != W1.shape or P2.shape != W2.shape:
        raise GrokfastError(f"parameters do not fit the config: need W1 [{config.d_in}, "
                            f"{config.width}] and W2 [{config.width}, {config.p}], got "
                            f"{tuple(W1.shape)}, {tuple(W2.shape)} and {tuple(P1.shape)}, "
                            f"{tuple(P2.shape)}")
    loss_fn, grad_fn, make_jacobian = two_layer_functions(config, data)
    flat = lambda a, b: torch.cat([a.reshape(-1), b.reshape(-1)])  # noqa: E731
    return align_flat(loss_fn, grad_fn, make_jacobian, flat(P1, P2), flat(W1, W2),
                      gd_steps=gd_steps, gd_lr=gd_lr, gd_momentum=gd_momentum, cg_tol=cg_tol,
                      cg_maxiter=cg_maxiter, dense_limit=dense_limit, lanczos_iters=lanczos_iters,
                      return_tangent=return_tangent)


def two_layer_functions(config: Config, data: Dataset):
    """(loss_fn, grad_fn, make_jacobian) of the two-layer net on flat θ = [vec W1, vec W2] (float64):
    the training loss in the config's loss and reduction, its gradient Jᵀ ∂L/∂Ŷ (autograd through
    the loss only, the network's part in closed form), and the TwoLayerJacobian at θ."""
    X, labels = data.X_train, data.train_labels
    shape1, shape2 = (config.d_in, config.width), (config.width, config.p)
    k = shape1[0] * shape1[1]

    def make_jacobian(th):
        return TwoLayerJacobian(th[:k].reshape(shape1), th[k:].reshape(shape2), X,
                                config.activation)

    def loss_fn(th):
        jac = make_jacobian(th)
        return data_loss(jac.H @ jac.W2, labels, config)

    def grad_fn(th):
        jac = make_jacobian(th)
        logits = (jac.H @ jac.W2).requires_grad_(True)
        (C,) = torch.autograd.grad(data_loss(logits, labels, config), logits)
        return jac.vjp(C.reshape(-1))

    return loss_fn, grad_fn, make_jacobian


PROBE_FIELDS = ("cos", "dist", "residual", "sigma_min", "norm", "cg_iters", "tangent_residual")


class AlignmentProbe:
    """Engine observer (grokfast.train(..., observers=[probe])) running `alignment` during training.

    Probes at t = every, 2·every, … ≤ steps, plus the steps in `at` (e.g. log-spaced early ones),
    pausing the loop at t − lag and t. At each t and for every model of the launch it records
    probe_step, probe_cos, probe_dist, probe_residual, probe_sigma_min, probe_norm, probe_cg_iters and
    probe_tangent_residual (float64 arrays over probe steps) into Result.extras. It reads CPU copies
    of θ only, so the trajectory is bitwise the one without the probe. every=None probes only at `at`.
    kwargs go to `alignment` (gd_steps, gd_lr, gd_momentum, cg_tol, dense_limit, ...).
    """

    def __init__(self, config: Config, data: Optional[Dataset] = None, every: Optional[int] = 1000,
                 lag: int = 10, at: Sequence[int] = (), **kwargs):
        at = sorted({int(t) for t in at})
        if not (isinstance(lag, int) and lag >= 1) or (every is not None and not (
                isinstance(every, int) and every >= 1)):
            raise GrokfastError(f"AlignmentProbe needs integers every ≥ 1 (or None) and lag ≥ 1 "
                                f"(got every={every!r}, lag={lag!r})")
        if every is None and not at:
            raise GrokfastError("AlignmentProbe needs every or at: give the probe steps")
        if (every is not None and lag > every) or (at and at[0] < lag):
            raise GrokfastError(f"lag={lag} reaches before step 0 for the first probe step; use "
                                f"lag ≤ every and probe steps in `at` ≥ lag")
        self.config, self.every, self.lag, self.at, self.kwargs = config, every, lag, at, kwargs
        self.data = make_dataset(config) if data is None else data
        self._prev: dict = {}
        self._rows: list = []   # per model: list of (step, Alignment)

    def _is_probe(self, t: int) -> bool:
        return t in self.at or bool(self.every and t > 0 and t % self.every == 0)

    def probe_steps(self, steps: int) -> list:
        every = range(self.every, steps + 1, self.every) if self.every else ()
        return sorted({t for t in self.at if t <= steps} | set(every))

    def pause_steps(self, steps: int):
        probes = self.probe_steps(steps)
        return sorted({t - self.lag for t in probes} | set(probes))

    def observe(self, step: int, W1: torch.Tensor, W2: torch.Tensor) -> None:
        if not self._rows:
            self._rows = [[] for _ in range(W1.shape[0])]
        if step in self._prev:
            P1, P2 = self._prev.pop(step)
            for i in range(W1.shape[0]):
                a = alignment(self.config, self.data, (P1[i], P2[i]), (W1[i], W2[i]), **self.kwargs)
                self._rows[i].append((step, a))
        if self._is_probe(step + self.lag):
            self._prev[step + self.lag] = (W1.clone(), W2.clone())

    def extras(self) -> list:
        out = []
        for rows in self._rows:
            d = {"probe_step": np.array([s for s, _ in rows], dtype=np.float64)}
            for name in PROBE_FIELDS:
                d[f"probe_{name}"] = np.array([float(getattr(a, name)) for _, a in rows],
                                              dtype=np.float64)
            out.append(d)
        return out
