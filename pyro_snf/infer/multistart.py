"""Multi-start MAP with Laplace approximations in a Pyro model's unconstrained space.

For the unconstrained energy ``u`` of a model (:class:`~pyro_snf.infer.potential.ModelPotential`,
``log Z`` of ``exp(-u)`` = log evidence), :func:`find_modes`:

1. starts from ``K`` prior draws (one batched model run under a plate left of the model's plates,
   mapped by ``biject_to(support).inv`` and packed in the potential's site order) plus one point from
   a Pyro ``init_loc_fn`` (``init_to_median`` by default);
2. minimises ``u`` at all starts at once (loss ``u(x).sum()``, the starts are independent): Adam, then
   Levenberg-Marquardt-damped Newton steps on ``|eigenvalues|`` (saddle-free), one batched model call
   per energy, ``D`` batched backward passes per Hessian;
3. keeps converged optima (Newton decrement < 0.1) with a finite energy and a positive-definite
   Hessian ``H`` (if there is none: the lowest point, ``|eigenvalues|`` floored), merges those closer than
   ``merge_distance`` in the Mahalanobis distance of either one's Laplace covariance ``H^-1``, and gives
   each the Laplace log mass ``-u(x*) + D/2 log 2 pi - 1/2 log det H``.

Above ``max_dense_dim`` latent dimensions only the Hessian's diagonal is estimated (Hutchinson, 64
Rademacher probes, floored): the Newton steps and the Laplace covariance are then diagonal, the mass
rough, and strongly correlated posteriors converge slowly (starts that do not converge are dropped).

:func:`whitened_model` is the model in the coordinates ``z`` of a mode's Laplace approximation.
:func:`assign_modes` is the deterministic partition rule used to combine one proposal per mode:
``x`` belongs to the mode ``k`` that maximises ``log mass_k + log N(x; x*_k, H_k^-1)``.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(y):
    ...     theta = pyro.sample("theta", dist.Normal(0.0, 2.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(theta ** 2, 1.0), obs=y)
    >>> pyro.set_rng_seed(0)
    >>> pot = ModelPotential.from_model(model, torch.full((20,), 2.25))
    >>> modes = find_modes(pot, num_starts=8)
    >>> sorted(round(float(m.loc[0]), 2) for m in modes)
    [-1.5, 1.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from torch import Tensor
from torch.distributions import biject_to

from pyro_snf.infer.potential import ModelPotential
from pyro_snf.infer.tracing import particle_dim

_STARTS = "_pyro_snf_multistart"


@dataclass
class Mode:
    """A local minimum of ``u`` with its Laplace approximation ``N(loc, H^-1)``."""

    loc: Tensor  #: the optimum, unconstrained, shape ``(D,)``
    energy: float  #: ``u(loc)``
    hessian: Tensor  #: ``(D, D)``; diagonal when only the diagonal was estimated
    scale_tril: Tensor  #: Cholesky factor of ``H^-1``
    log_mass: float  #: Laplace log mass ``-u + D/2 log 2 pi - 1/2 log det H``
    count: int = 1  #: how many starts converged here
    positive_definite: bool = True  #: False: ``|eigenvalues|`` of ``H`` floored (no proper optimum found)

    def mahalanobis(self, x: Tensor) -> Tensor:
        """``sqrt((x - loc)^T H (x - loc))`` for ``x`` of shape ``(..., D)``."""
        d = x - self.loc
        return ((d @ self.hessian) * d).sum(-1).clamp_min(0).sqrt()

    def log_density(self, x: Tensor) -> Tensor:
        """``log mass + log N(x; loc, H^-1)``: the Laplace approximation of ``-u(x)``."""
        dim = self.loc.shape[-1]
        logdet_h = -2 * self.scale_tril.diagonal().log().sum()
        return (self.log_mass - 0.5 * self.mahalanobis(x) ** 2 - 0.5 * dim * math.log(2 * math.pi)
                + 0.5 * logdet_h)


def prior_starts(pot: ModelPotential, num: int, init_loc_fn: Callable | None = init_to_median) -> Tensor:
    """``num`` prior draws (one batched run) and, if ``init_loc_fn`` is given, its point; shape
    ``(num [+ 1], D)`` in the unconstrained space, packed in ``pot``'s site order."""
    parts = []
    if num > 0:
        def batched(*args: object, **kwargs: object) -> None:
            with pyro.plate(_STARTS, num, dim=particle_dim(pot.max_plate_nesting)):
                pot.model(*args, **kwargs)

        with pyro.validation_enabled(False):
            tr = poutine.block(poutine.trace(batched).get_trace)(*pot.args, **pot.kwargs)
        parts.append(pack(pot, {s.name: tr.nodes[s.name]["value"] for s in pot.sites}, num))
    if init_loc_fn is not None:
        with pyro.validation_enabled(False):
            model = InitMessenger(init_loc_fn)(pot.model)
            tr = poutine.block(poutine.trace(model).get_trace)(*pot.args, **pot.kwargs)
        parts.append(pack(pot, {s.name: tr.nodes[s.name]["value"] for s in pot.sites}, 1))
    if not parts:
        raise ValueError("no start: num_starts = 0 and no init_loc_fn")
    return torch.cat(parts).detach()


def pack(pot: ModelPotential, values: dict[str, Tensor], num: int) -> Tensor:
    """Constrained site values of ``num`` points (leading dim ``num``, or none: shared) as unconstrained
    rows ``(num, D)`` in ``pot``'s site order."""
    cols = []
    for site in pot.sites:
        x = biject_to(site.support).inv(values[site.name].detach()).reshape(-1)
        if x.numel() == site.size:
            x = x.expand(num, site.size)
        cols.append(x.reshape(num, site.size))
    return torch.cat(cols, -1)


def _grad_hess(pot: ModelPotential, x: Tensor, dense: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``u``, ``grad u`` and the Hessian (``(K, D, D)``, or its diagonal ``(K, D)``) at ``x`` ``(K, D)``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        u = pot(x)
        (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        k, dim = x.shape
        if dense:
            rows = [torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[0] for i in range(dim)]
            h = torch.stack(rows, 1)
            h = 0.5 * (h + h.transpose(-1, -2))
        else:  # Hutchinson: E[v * Hv] = diag H for Rademacher v
            h = torch.zeros_like(x)
            for _ in range(64):
                v = torch.randint(0, 2, x.shape, dtype=x.dtype, device=x.device) * 2 - 1
                (hv,) = torch.autograd.grad((g * v).sum(), x, retain_graph=True)
                h = h + v * hv / 64
    return u.detach(), g.detach(), torch.nan_to_num(h.detach(), nan=0.0)


def _newton_step(g: Tensor, h: Tensor, lam: Tensor) -> Tensor:
    """Damped saddle-free Newton step ``-(|H| + lam max|eig| I)^-1 g``, batched."""
    if h.dim() == 2:  # diagonal
        e = h.abs()
        top = e.max(-1, keepdim=True).values.clamp_min(1e-30)
        return -g / (e.clamp_min(1e-10 * top) + lam[:, None] * top)
    e, v = torch.linalg.eigh(h)
    e = e.abs()
    top = e.max(-1, keepdim=True).values.clamp_min(1e-30)
    e = e.clamp_min(1e-10 * top) + lam[:, None] * top
    return -(v @ ((v.transpose(-1, -2) @ g[..., None]) / e[..., None])).squeeze(-1)


def optimize(pot: ModelPotential, x: Tensor, num_adam_steps: int = 100, num_newton_steps: int = 40,
             lr: float = 0.1, dense: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Minimise ``u`` from every row of ``x`` at once; returns ``x*``, ``u``, ``grad u``, Hessians.

    Adam (hand-written: cosine-decayed ``lr``), then damped Newton until the Newton decrement of every
    start is below ``1e-5 (1 + |u|)`` (float32 noise) or ``num_newton_steps`` are spent."""
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t in range(1, num_adam_steps + 1):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            u = pot(xg)
            (g,) = torch.autograd.grad(u.masked_fill(~torch.isfinite(u), 0.0).sum(), xg)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        step_lr = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / num_adam_steps)))
        x = x - step_lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
    x = x.detach()
    lam = torch.full(x.shape[:1], 1e-3, dtype=x.dtype, device=x.device)
    u, g, h = _grad_hess(pot, x, dense)
    for _ in range(num_newton_steps):
        step = _newton_step(g, h, lam)
        done = (-(g * step).sum(-1) <= 1e-5 * (1 + u.abs())) & (lam <= 1e-2)
        if bool((done | ~torch.isfinite(u)).all()):
            break
        with torch.no_grad():
            u_new = pot(x + step)
        ok = torch.isfinite(u_new) & (u_new <= u) & torch.isfinite(step).all(-1)
        x = torch.where(ok[:, None], x + step, x)
        lam = torch.where(ok, lam / 10, lam * 10).clamp(1e-8, 1e8)
        u, g, h = _grad_hess(pot, x, dense)
    return x, u, g, h


def find_modes(pot: ModelPotential, num_starts: int = 16, init_loc_fn: Callable | None = init_to_median,
               max_dense_dim: int = 300, merge_distance: float = 2.0, num_adam_steps: int = 100,
               num_newton_steps: int = 40) -> list[Mode]:
    """Distinct local minima of ``u`` with positive-definite Hessians, largest Laplace mass first.

    Returns an empty list when no start reaches such a point (then use another method or more starts).
    """
    dense = pot.dim <= max_dense_dim
    x, u, g, h = optimize(pot, prior_starts(pot, num_starts, init_loc_fn), num_adam_steps,
                          num_newton_steps, dense=dense)
    decrement = -(g * _newton_step(g, h, torch.zeros_like(u))).sum(-1)  # ~ u(x) - u(optimum)
    candidates = []
    for i in range(x.shape[0]):
        mode = _laplace(x[i], float(u[i]), h[i]) if float(decrement[i]) < 0.1 else None
        if mode is not None:
            candidates.append(mode)
    finite = torch.isfinite(u) & torch.isfinite(x).all(-1) & torch.isfinite(h).flatten(1).all(-1)
    if not candidates and bool(finite.any()):  # fall back to the lowest point, |eigenvalues| floored
        i = int(torch.where(finite, u, torch.full_like(u, math.inf)).argmin())
        candidates.append(_laplace(x[i], float(u[i]), h[i], floor=True))
    candidates.sort(key=lambda m: -m.log_mass)
    modes: list[Mode] = []
    for cand in candidates:
        same = [m for m in modes
                if min(float(m.mahalanobis(cand.loc)), float(cand.mahalanobis(m.loc))) < merge_distance]
        if same:
            same[0].count += 1
        else:
            modes.append(cand)
    return modes


def _laplace(loc: Tensor, energy: float, h: Tensor, floor: bool = False) -> Mode | None:
    """The Laplace approximation at ``loc``; ``None`` unless ``H`` is positive definite (with
    ``floor``: ``|eigenvalues|`` floored at ``1e-6`` of the largest, and marked so)."""
    if not math.isfinite(energy) or not bool(torch.isfinite(h).all()) or not bool(torch.isfinite(loc).all()):
        return None
    hd = torch.diag(h) if h.dim() == 1 else h
    e, v = torch.linalg.eigh(hd.double())
    top = float(e.abs().max().clamp_min(1e-30))
    pd = h.dim() == 1 or float(e.min()) > 1e-8 * top
    if not pd and not floor:
        return None  # saddle, maximum or flat direction: no Laplace approximation
    if h.dim() == 1 or not pd:  # floored (the diagonal estimate always: Hutchinson can be negative)
        e = e.abs().clamp_min(1e-6 * top)
        hd = (v * e) @ v.T
    cov = (v / e) @ v.T
    tril = torch.linalg.cholesky(0.5 * (cov + cov.T))
    dim = loc.shape[-1]
    log_mass = -energy + 0.5 * dim * math.log(2 * math.pi) - 0.5 * float(e.log().sum())
    return Mode(loc, energy, hd.to(h.dtype), tril.to(h.dtype), log_mass, positive_definite=pd)


def assign_modes(modes: list[Mode], x: Tensor) -> Tensor:
    """Index of the mode whose Laplace term ``log mass_k + log N(x; loc_k, H_k^-1)`` is largest, for
    ``x`` of shape ``(N, D)``: a deterministic partition of the space (ties go to the lower index)."""
    if len(modes) == 1:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    scores = torch.stack([m.log_density(x) for m in modes], -1)
    return torch.nan_to_num(scores, nan=-math.inf).argmax(-1)


def chi2_quantile(dim: int, p: float = 0.999) -> float:
    """Wilson-Hilferty approximation of the ``p`` quantile of chi-square with ``dim`` degrees."""
    z = {0.99: 2.3263, 0.999: 3.0902}[p]
    a = 2.0 / (9.0 * dim)
    return dim * (1 - a + z * math.sqrt(a)) ** 3


def mass_fractions(modes: list[Mode]) -> list[float]:
    """Each mode's share of the total Laplace mass."""
    lm = torch.tensor([m.log_mass for m in modes], dtype=torch.float64)
    return (lm - torch.logsumexp(lm, 0)).exp().tolist()


def whitened_model(pot: ModelPotential, mode: Mode, shapes: dict[str, tuple], name: str = "z") -> Callable:
    """A model with one latent ``name`` (``z`` in ``R^D``) and density ``exp(-u(loc + L z)) |det L|``
    (``L`` = ``mode.scale_tril``): the same evidence, ``N(0, I)`` its Laplace approximation. It runs
    ``pot.model`` conditioned on ``T(loc + L z)``; ``shapes``: each latent site's constrained shape."""
    loc, tril = mode.loc, mode.scale_tril
    logdet = tril.diagonal().log().sum()

    def whitened() -> None:
        std = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        z = pyro.sample(name, std)
        x = loc + z @ tril.T
        batch_dims = x.dim() - 2 if x.dim() > 1 else pot.max_plate_nesting  # particles: left-most dim
        values, ladj = pot.constrain(x.reshape(-1, x.shape[-1]), batch_dims)
        if x.dim() == 1:
            values = {k: v.reshape(shapes[k]) for k, v in values.items()}
        pyro.factor(f"{name}_log_density", ladj.reshape(x.shape[:-1]) + logdet - std.log_prob(z))
        with pyro.validation_enabled(False):
            poutine.condition(pot.model, data=values)(*pot.args, **pot.kwargs)

    return whitened
