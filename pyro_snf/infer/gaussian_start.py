"""A variational Gaussian start for :func:`~pyro_snf.infer.sample_posterior` where the Laplace one fails.

In hierarchical and latent-series models written centred (``theta_j ~ N(mu, tau)``, an AR(1) path with
scale ``sigma``), the joint density has no proper maximum: it grows without bound as ``tau -> 0`` with
every ``theta_j -> mu``, and the multi-start MAP ends on that spike with a Hessian whose inverse is
``~tau^2``: a Laplace start there is far from the posterior. A Gaussian fitted by maximising the ELBO

.. math::

    \\mathcal{L}(m, s) = \\mathbb{E}_{\\epsilon \\sim N(0, I)}\\big[-u(m + s \\odot \\epsilon)\\big]
    + \\sum_i \\log s_i + \\tfrac{D}{2} \\log(2 \\pi e)

cannot sit on a spike of zero width (the entropy term forbids it), and its ELBO says which start is
better: :func:`better_start` fits it (diagonal, Adam, reparametrised gradients, all particles in one
batched energy call) and keeps whichever of the two Gaussians has the higher ELBO, estimated on the same
standard-normal draws. The ELBO is a lower bound of ``log Z`` for both, so the comparison is fair.

Example::

    >>> import torch
    >>> class U:  # u(x) = |x - 3|^2 / 2 in 2-D
    ...     dim = 2
    ...     def __call__(self, x):
    ...         return 0.5 * ((x - 3.0) ** 2).sum(-1)
    >>> m, s, elbo = fit_gaussian(U(), torch.zeros(2), num_steps=300, seed=0)
    >>> bool(((m - 3).abs() < 0.1).all() and ((s - 1).abs() < 0.1).all())
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_snf.infer import multistart as ms

__all__ = ["fit_gaussian", "elbo", "better_start"]


def elbo(u: object, loc: Tensor, scale: Tensor, eps: Tensor) -> Tensor:
    """Monte Carlo ELBO of ``N(loc, S S^T)`` on the draws ``loc + S eps``: ``scale`` is the diagonal of
    ``S`` (shape ``(D,)``) or ``S`` itself, lower triangular ``(D, D)``. Non-finite energies count as
    ``+inf`` (ELBO ``-inf``)."""
    if scale.dim() == 1:
        x, log_det = loc + scale * eps, scale.log().sum()
    else:
        x, log_det = loc + eps @ scale.T, scale.diagonal().log().sum()
    e = u(x)
    e = torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))
    return -e.mean() + log_det + 0.5 * loc.shape[-1] * math.log(2 * math.pi * math.e)


def fit_gaussian(u: object, loc: Tensor, num_steps: int = 1000, num_particles: int = 16, lr: float = 0.05,
                 init_scale: float = 0.1, seed: int | None = None) -> tuple[Tensor, Tensor, float]:
    """Maximise the ELBO of a diagonal Gaussian on ``u`` from ``N(loc, init_scale^2 I)``; ClippedAdam-like
    (gradient norm clipped at 10, learning rate decayed tenfold). Returns ``(loc, scale, elbo)``, the ELBO
    re-estimated on 256 fresh draws."""
    gen = torch.Generator(device=loc.device)
    gen.manual_seed(int(torch.randint(0, 2**31, ()).item()) if seed is None else seed)
    m = loc.detach().clone().requires_grad_(True)
    log_s = torch.full_like(loc, math.log(init_scale)).requires_grad_(True)
    opt = torch.optim.Adam([m, log_s], lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1 / max(num_steps, 1)))
    for _ in range(num_steps):
        eps = torch.randn((num_particles, loc.shape[-1]), generator=gen, dtype=loc.dtype, device=loc.device)
        loss = -elbo(u, m, log_s.exp(), eps)
        opt.zero_grad()
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_([m, log_s], 10.0)
            opt.step()
        sched.step()
    eps = torch.randn((256, loc.shape[-1]), generator=gen, dtype=loc.dtype, device=loc.device)
    with torch.no_grad():
        value = float(elbo(u, m, log_s.exp(), eps))
    return m.detach(), log_s.detach().exp(), value


def better_start(pot: object, mode: ms.Mode, num_steps: int, num_particles: int,
                 lr: float) -> tuple[ms.Mode, bool]:
    """``mode`` or the fitted Gaussian (as a :class:`~pyro_snf.infer.multistart.Mode` with a diagonal
    Hessian ``1/s^2``), whichever has the higher ELBO; the flag says whether it is the Gaussian."""
    start = ms.prior_starts(pot, 0)[0]  # the prior median: never the spike
    m, s, _ = fit_gaussian(pot, start, num_steps, num_particles, lr)
    eps = torch.randn((256, mode.loc.shape[-1]), dtype=mode.loc.dtype, device=mode.loc.device)
    with torch.no_grad():  # both ELBOs on the same draws
        value, lap = float(elbo(pot, m, s, eps)), float(elbo(pot, mode.loc, mode.scale_tril, eps))
    if not value > lap:
        return mode, False
    with torch.no_grad():
        energy = float(pot(m[None])[0])
    return ms.Mode(m, energy, torch.diag(s**-2), torch.diag(s), value, count=mode.count), True
