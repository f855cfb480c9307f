"""The energy of a molecule in internal coordinates: ``u_z(z) = u(x(z)) - log|det J(z)|`` (minus the
rigid-body factor ``log g(z)`` with ``rigid_body=True``), for :class:`~pyro_snf.molecules.internal.
MixedTransform` (see its module doc for the math). For a ``MixedTransform`` it is evaluated in one pass:
the placement's bond lengths, ``sin theta`` and Cartesian block are reused for the log-determinant and the
rigid-body factor.
"""

from __future__ import annotations

from torch import Tensor, nn

from pyro_snf.molecules.internal import MixedTransform
from pyro_snf.molecules.zmatrix import log_rigid_factor
from pyro_snf.targets.base import Target


class InternalEnergy(nn.Module, Target):
    """The energy in internal coordinates, ``u_z(z) = u(transform(z)) - log|det J(z)|`` (kT = 1).

    :param energy: the energy ``u`` on positions ``(..., 3N)`` (e.g. :class:`OpenMMEnergy`; its cut, if
        any, applies to ``u`` before the log-determinant is subtracted).
    :param transform: a :class:`MixedTransform`. ``log_Z`` is unknown (``None``).
    :param rigid_body: also subtract the rigid-body factor ``log g(z)`` (module doc): the marginal of the
        Boltzmann density on all 3N coordinates, which aligned MD frames sample.
    """

    log_Z = None

    def __init__(self, energy, transform: MixedTransform, rigid_body: bool = False) -> None:
        super().__init__()
        self.potential = energy
        self.transform = transform
        self.rigid_body = rigid_body
        self.dim = transform.dim_z

    def forward(self, z: Tensor) -> Tensor:
        if not isinstance(self.transform, MixedTransform):
            x = self.transform(z)
            u = self.potential(x) - self.transform.log_abs_det_jacobian(z, x)
            return u - self.transform.log_rigid_factor(z) if self.rigid_body else u
        t = self.transform  # one pass: the placement's r, sin(theta) and Cartesian block are reused
        t._check(z, t.dim_z, "internal coordinates z")
        x, cart, r, sin_theta = t._place_all(z)
        u = self.potential(x) - t._log_det(r, sin_theta, 0).reshape(z.shape[:-1])
        return u - log_rigid_factor(cart, t._buf("ref", z)).reshape(z.shape[:-1]) if self.rigid_body else u

    def energy(self, z: Tensor) -> Tensor:
        return self(z)


__all__ = ["InternalEnergy"]
