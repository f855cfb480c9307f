"""A batched, differentiable torch energy read from a vacuum OpenMM ``System``.

For positions :math:`x \\in \\mathbb{R}^{3N}` (nm) the potential (kJ/mol) is the sum of OpenMM's terms

.. math::

    U(x) = \\sum_{\\rm bonds} \\tfrac{k}{2} (r - r_0)^2
         + \\sum_{\\rm angles} \\tfrac{k}{2} (\\theta - \\theta_0)^2
         + \\sum_{\\rm torsions} k \\, (1 + \\cos(n \\phi - \\phi_0))
         + \\sum_{\\rm pairs} \\Big[ \\frac{C\\, q_{ij}}{r} + 4 \\epsilon_{ij}
           \\Big( \\big(\\tfrac{\\sigma_{ij}}{r}\\big)^{12}
           - \\big(\\tfrac{\\sigma_{ij}}{r}\\big)^{6} \\Big) \\Big],

with :math:`C = 1/(4 \\pi \\epsilon_0) = 138.9354576` kJ nm mol⁻¹ e⁻² (OpenMM 8's ``ONE_4PI_EPS0``, CODATA
2018; OpenMM 7's 138.935456 differs by 1e-8 relative, 2e-6 kJ/mol on alanine dipeptide). The
pairs are all :math:`i < j` with :math:`q_{ij} = q_i q_j`, Lorentz-Berthelot
:math:`\\sigma_{ij} = (\\sigma_i + \\sigma_j)/2`, :math:`\\epsilon_{ij} = \\sqrt{\\epsilon_i \\epsilon_j}`,
except that a ``NonbondedForce`` exception replaces a pair's ``(q_ij, sigma_ij, epsilon_ij)`` by its own
(1-4 pairs, scaled) and an exception with zero charge product and zero epsilon removes the pair
(1-2 and 1-3 pairs). The dihedral :math:`\\phi \\in (-\\pi, \\pi]` of atoms 1-2-3-4 is IUPAC's, as in
OpenMM: with :math:`b_1 = x_2 - x_1`, :math:`b_2 = x_3 - x_2`, :math:`b_3 = x_4 - x_3`,
:math:`\\phi = \\operatorname{atan2}(|b_2|\\, b_1 \\cdot (b_2 \\times b_3),\\;
(b_1 \\times b_2) \\cdot (b_2 \\times b_3))`. :class:`OpenMMEnergy` returns the reduced energy
:math:`u(x) = U(x) / k_B T` (kT = 1, the project's convention), with
:math:`k_B T = R T`, :math:`R = 0.0083144626` kJ mol⁻¹ K⁻¹.

**Regularising cut** (off by default; ``cut=(high, max)`` in kT). In float32 the :math:`r^{-12}` term
overflows for overlapping atoms, and training by reverse KL meets huge energies; the Boltzmann-generator
papers replace :math:`u` by ``linlogcut``:

.. math::

    \\tilde u = \\min(u, u_{\\max}), \\qquad
    \\operatorname{linlogcut}(u) = \\begin{cases} \\tilde u & \\tilde u < u_{\\rm high} \\\\
    u_{\\rm high} + \\log(1 + \\tilde u - u_{\\rm high}) & \\text{otherwise,} \\end{cases}

identity below ``high``, logarithmic growth above it, constant (force zero) above ``max``; ``+inf`` and
NaN energies become the constant :math:`u_{\\rm high} + \\log(1 + u_{\\max} - u_{\\rm high})` (their
autograd forces may still be NaN). The cut changes the target density where :math:`u > u_{\\rm high}`,
i.e. only where it is below :math:`e^{-u_{\\rm high}}`; importance weights computed with it are exact for
the cut density, not for Boltzmann's.

Supported: ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``, ``NonbondedForce``
with ``NoCutoff`` (no parameter offsets), any number of each; ``CMMotionRemover`` is ignored (it changes
no energy). Anything else (other forces, periodic boxes, cutoffs, constraints, virtual sites) raises a
``ValueError`` saying what to change.

Example (a two-atom bond; :func:`pyro_snf.molecules.alanine_dipeptide` builds the paper's molecule)::

    >>> import pytest; openmm = pytest.importorskip("openmm")
    >>> import torch
    >>> system = openmm.System()
    >>> for _ in range(2):
    ...     _ = system.addParticle(12.0)
    >>> bond = openmm.HarmonicBondForce()
    >>> _ = bond.addBond(0, 1, 0.15, 1000.0)   # r0 = 0.15 nm, k = 1000 kJ/mol/nm^2
    >>> _ = system.addForce(bond)
    >>> energy = OpenMMEnergy(system, temperature=300.0)
    >>> x = torch.tensor([[0.0, 0.0, 0.0, 0.25, 0.0, 0.0]], dtype=torch.float64)
    >>> round(float(energy(x)[0] * energy.kT), 6)   # 0.5 * 1000 * 0.1^2 kJ/mol
    5.0

References: OpenMM user guide, "Standard Forces" (http://docs.openmm.org/latest/userguide/theory.html);
F. Noé, S. Olsson, J. Köhler, H. Wu, Boltzmann generators, Science 365, eaaw1147 (2019); H. Wu, J. Köhler,
F. Noé, Stochastic normalizing flows, NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyro_snf.molecules.openmm_system import SUPPORTED, _check_system, _read_force
from pyro_snf.targets.base import Target

#: OpenMM 8's 1 / (4 pi eps0) in kJ nm / (mol e^2), from CODATA 2018 (SimTKOpenMMRealType.h).
ONE_4PI_EPS0 = 138.93545764438198
#: Molar gas constant in kJ / (mol K) (CODATA 2018, as openmm.unit.MOLAR_GAS_CONSTANT_R).
MOLAR_GAS_CONSTANT_R = 8.31446261815324e-3


def linlogcut(u: Tensor, high: float, max: float) -> Tensor:
    """Identity below ``high``, ``high + log(1 + u - high)`` above, ``u`` capped at ``max`` first."""
    capped = torch.where(u < max, u, torch.full_like(u, max))  # NaN and +inf become max
    above = high + torch.log1p(torch.clamp(capped - high, min=0.0))
    return torch.where(capped < high, capped, above)


# Geometry on coordinate tuples (X, Y, Z): elementwise arithmetic on the components. The energy works on
# batch-last components of shape (V, B): gathers of whole rows and contiguous elementwise ops, several
# times faster (forward + backward) than gathering along the last dimension.
Coords = tuple[Tensor, Tensor, Tensor]


def _cross(u: Coords, v: Coords) -> Coords:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _dot(u: Coords, v: Coords) -> Tensor:
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _torsion_angle(b1: Coords, b2: Coords, n1: Coords, n2: Coords) -> Tensor:
    """IUPAC dihedral from the bond vectors ``b1, b2`` and the normals ``n1 = b1 x b2``, ``n2 = b2 x b3``."""
    return torch.atan2(_dot(b2, b2).sqrt() * _dot(b1, n2), _dot(n1, n2))


def dihedral(x: Tensor, quads: Tensor) -> Tensor:
    """IUPAC (and OpenMM) dihedral angles in ``(-pi, pi]``, shape ``(..., T)``, of the atom quadruples
    ``quads`` (shape ``(T, 4)``, 0-based) at positions ``x`` of shape ``(..., 3N)``."""
    quads = torch.as_tensor(quads, device=x.device).reshape(-1, 4)
    xyz = x.unflatten(-1, (-1, 3)).unbind(-1)
    b1, b2, b3 = (tuple(c.index_select(-1, quads[:, j + 1]) - c.index_select(-1, quads[:, j]) for c in xyz)
                  for j in range(3))
    return _torsion_angle(b1, b2, _cross(b1, b2), _cross(b2, b3))


#: Force kinds in the order of the fused evaluation, with their (derived) parameters.
_KINDS = ("HarmonicBondForce", "NonbondedForce", "HarmonicAngleForce", "PeriodicTorsionForce")
_FUSED = {"HarmonicBondForce": {"r0": lambda t: t.r0, "k2": lambda t: 0.5 * t.k},
          "NonbondedForce": {"cqq": lambda t: ONE_4PI_EPS0 * t.qq, "sigma2": lambda t: t.sigma ** 2,
                             "eps4": lambda t: 4.0 * t.epsilon},
          "HarmonicAngleForce": {"theta0": lambda t: t.theta0, "k2": lambda t: 0.5 * t.k},
          "PeriodicTorsionForce": {"n": lambda t: t.n, "phase": lambda t: t.phase, "k": lambda t: t.k}}


def _refuse(module: OpenMMEnergy, incompatible_keys: Any) -> None:
    module._fuse()


class OpenMMEnergy(nn.Module, Target):
    """The reduced potential ``u(x) = U(x) / kT`` of a vacuum OpenMM ``System``, batched and differentiable.

    :param system: an ``openmm.System`` (vacuum, no constraints; see the module doc for what it supports).
    :param temperature: temperature ``T`` in K; ``kT = R T`` in kJ/mol.
    :param cut: ``None`` (default) or ``(high, max)`` in kT: apply :func:`linlogcut` to ``u``.
    :param dtype: dtype of the stored parameters (float64 by default; energies are computed in the input's
        dtype either way, and ``.to(dtype=..., device=...)`` moves the buffers).

    Input positions have shape ``(..., 3N)`` in nm, atom-major (``x0, y0, z0, x1, ...``); the output has
    shape ``(...)``. :meth:`energy_terms` gives each force's energy in kJ/mol, keyed by its index in the
    ``System`` (as OpenMM force groups would).
    """

    log_Z = None

    def __init__(self, system: Any, temperature: float = 300.0, cut: tuple[float, float] | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        _check_system(system)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 K, got {temperature}")
        if cut is not None:
            cut = (float(cut[0]), float(cut[1]))
            if not cut[0] < cut[1]:
                raise ValueError(f"cut=(high, max) needs high < max, got {cut}")
        self.n_atoms = system.getNumParticles()
        self.dim = 3 * self.n_atoms
        self.temperature = float(temperature)
        self.kT = MOLAR_GAS_CONSTANT_R * self.temperature
        self.cut = cut
        self.terms = nn.ModuleDict({
            str(index): _read_force(force, self.n_atoms, dtype)
            for index, force in enumerate(system.getForces()) if type(force).__name__ in SUPPORTED})
        self._fuse()
        self.register_load_state_dict_post_hook(_refuse)

    def _fuse(self) -> None:
        """All terms of each kind concatenated (non-persistent buffers, rebuilt after ``load_state_dict``):
        bond-vector end points ``(head, tail)`` laid out as (bond and nonbonded pairs | cross-product
        left operands | right operands), per-kind parameters, and each force's span within its kind."""
        kinds = {kind: [(int(i), t) for i, t in self.terms.items() if t.kind == kind] for kind in _KINDS}
        self._counts = [sum(len(t.idx) for _, t in kinds[kind]) for kind in _KINDS]
        self._spans, self._kinds = [], [kind for kind, n in zip(_KINDS, self._counts) if n]
        for kind in _KINDS:
            start = 0
            for index, term in kinds[kind]:
                self._spans.append((index, kind, start, start + len(term.idx)))
                start += len(term.idx)
        self._spans.sort()
        like = next(iter(self.terms.values())).idx if len(self.terms) else torch.zeros(0, dtype=torch.int64)

        def idx(kind: str, width: int) -> Tensor:
            rows = [t.idx for _, t in kinds[kind]]
            return torch.cat(rows) if rows else like.new_zeros((0, width))

        bond, pair, angle, tors = idx(_KINDS[0], 2), idx(_KINDS[1], 2), idx(_KINDS[2], 3), idx(_KINDS[3], 4)
        # (head, tail) of each vector x_head - x_tail: pairs (x1 - x0); left: angle (x0 - x1), torsion
        # b1 = x1 - x0, b2 = x2 - x1; right: angle (x2 - x1), torsion b2, b3 = x3 - x2
        ends = [(bond[:, 1], bond[:, 0]), (pair[:, 1], pair[:, 0]), (angle[:, 0], angle[:, 1]),
                (tors[:, 1], tors[:, 0]), (tors[:, 2], tors[:, 1]), (angle[:, 2], angle[:, 1]),
                (tors[:, 2], tors[:, 1]), (tors[:, 3], tors[:, 2])]
        heads, tails = torch.cat([h for h, _ in ends]), torch.cat([t for _, t in ends])
        for name, atoms in (("fused_head", heads), ("fused_tail", tails)):  # coordinate-major rows of (3N, B)
            self.register_buffer(name, torch.cat([3 * atoms + c for c in range(3)]), persistent=False)
        for kind, derived in _FUSED.items():
            for name, fn in derived.items():
                values = [fn(t) for _, t in kinds[kind]]
                self.register_buffer(f"fused_{kind}_{name}", torch.cat(values)[:, None] if values else None,
                                     persistent=False)

    def _param(self, kind: str, name: str, like: Tensor) -> Tensor:
        return getattr(self, f"fused_{kind}_{name}").to(like.dtype)

    def _positions(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"OpenMMEnergy of {self.n_atoms} atoms takes positions of shape "
                             f"(..., {self.dim}) in nm, got {tuple(x.shape)}")
        return x.reshape(-1, self.dim).T.contiguous()  # (3N, B): batch last

    def _elements(self, x: Tensor) -> dict[str, Tensor]:
        """Each kind's per-term energies in kJ/mol, shape ``(terms of that kind, B)``, ``B`` = batch size."""
        xt = self._positions(x)
        nb, nn_, na, nt = self._counts
        vec = xt.index_select(0, self.fused_head) - xt.index_select(0, self.fused_tail)
        parts = [c.split([nb + nn_, na + 2 * nt, na + 2 * nt]) for c in vec.unflatten(0, (3, -1)).unbind(0)]
        pairs, left, right = zip(*parts)
        out = {}
        if nb + nn_:
            r2 = _dot(pairs, pairs)
            (r_b, r_n), (_, r2_n) = r2.sqrt().split([nb, nn_]), r2.split([nb, nn_])
            if nb:
                k = "HarmonicBondForce"
                out[k] = self._param(k, "k2", x) * (r_b - self._param(k, "r0", x)) ** 2
            if nn_:
                k = "NonbondedForce"
                s6 = (self._param(k, "sigma2", x) / r2_n) ** 3
                out[k] = self._param(k, "cqq", x) / r_n + self._param(k, "eps4", x) * (s6 * s6 - s6)
        if na + nt:
            c_a, n1, n2 = zip(*(c.split([na, nt, nt]) for c in _cross(left, right)))
            u_a, b1, b2 = zip(*(c.split([na, nt, nt]) for c in left))
            if na:
                k = "HarmonicAngleForce"
                theta = torch.atan2(_dot(c_a, c_a).sqrt(), _dot(u_a, tuple(c[:na] for c in right)))
                out[k] = self._param(k, "k2", x) * (theta - self._param(k, "theta0", x)) ** 2
            if nt:
                k = "PeriodicTorsionForce"
                phi = _torsion_angle(b1, b2, n1, n2)
                out[k] = self._param(k, "k", x) * (1.0 + torch.cos(self._param(k, "n", x) * phi
                                                                  - self._param(k, "phase", x)))
        return out

    def energy_terms(self, x: Tensor) -> dict[int, Tensor]:
        """Each supported force's energy in kJ/mol (shape ``x.shape[:-1]``), keyed by force index (each
        from its own evaluation, so that each has its own autograd graph)."""
        shape = x.shape[:-1]
        return {i: self._elements(x)[kind][start:stop].sum(0).reshape(shape) if stop > start
                else x.new_zeros(shape) for i, kind, start, stop in self._spans}

    def potential_kj(self, x: Tensor) -> Tensor:
        """The potential ``U(x)`` in kJ/mol, no cut."""
        if not self._kinds:
            return self._positions(x).new_zeros(x.shape[:-1])
        return torch.cat(list(self._elements(x).values())).sum(0).reshape(x.shape[:-1])

    def forward(self, x: Tensor) -> Tensor:
        u = self.potential_kj(x) / self.kT
        return u if self.cut is None else linlogcut(u, *self.cut)

    def energy(self, x: Tensor) -> Tensor:
        return self(x)

    def extra_repr(self) -> str:
        kinds = ", ".join(term.kind for term in self.terms.values())
        return f"n_atoms={self.n_atoms}, temperature={self.temperature}, cut={self.cut}, terms=[{kinds}]"
