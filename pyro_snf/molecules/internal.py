"""Internal coordinates for molecules: a bijective mixed transform (whitened Cartesian backbone + a
normalised Z-matrix, 6 rigid-body degrees of freedom removed) as a Pyro ``TransformModule``.

**Coordinates.** Of the :math:`N` atoms, :math:`k` are *Cartesian* (for alanine dipeptide the backbone
N, CA, HA, CB, C) and the other :math:`M = N - k` are placed one by one by Z-matrix rows
``(i, a, b, c)``: bond :math:`r_i = |x_i - x_a|`, angle :math:`\\theta_i = \\angle(x_i, x_a, x_b)`,
torsion :math:`\\phi_i` = dihedral ``(i, a, b, c)`` (see :mod:`pyro_snf.molecules.zmatrix`). The
internal coordinates :math:`z \\in \\mathbb{R}^{3N-6}` are laid out as

.. math::

    z = (w,\\; z^{r},\\; z^{\\theta},\\; z^{\\phi}), \\qquad
    r_i = \\mu^r_i + \\sigma^r_i z^r_i, \\quad
    \\theta_i = \\mu^\\theta_i + \\sigma^\\theta_i z^\\theta_i, \\quad
    \\phi_i = \\mu^\\phi_i + z^\\phi_i,

with :math:`w \\in \\mathbb{R}^{3k-6}` (slices :attr:`MixedTransform.cartesian_slice`, ``bond_slice``,
``angle_slice``, ``torsion_slice``). Bonds and angles are standardised by the mean and standard deviation
over the reference MD frames; torsions stay angles (radians, period :math:`2\\pi`), shifted by their
circular mean :math:`\\mu^\\phi = \\operatorname{atan2}(\\overline{\\sin\\phi}, \\overline{\\cos\\phi})`,
and :meth:`MixedTransform.inv` returns :math:`z^\\phi \\in (-\\pi, \\pi]`; :math:`z^\\phi` and
:math:`z^\\phi + 2\\pi` give the same configuration.

**Cartesian block.** The reference frames' Cartesian atoms are aligned (iterated Kabsch, Procrustes) to
their mean :math:`m \\in \\mathbb{R}^{3k}`. Optimal alignment is linear: an aligned :math:`y` satisfies
:math:`\\sum_j (y_j - m_j) = 0` and :math:`\\sum_j (m_j - \\bar m) \\times (y_j - m_j) = 0`, i.e.
:math:`y - m \\perp T`, the 6 infinitesimal rigid motions of :math:`m`. PCA of the aligned frames within
:math:`T^\\perp` (these are the principal components left after dropping the 6 of zero variance) gives
orthonormal axes :math:`U` (:math:`3k \\times (3k-6)`) and variances :math:`\\lambda`, and

.. math::

    x_{\\rm cart} = m + B w, \\qquad B = U \\operatorname{diag}(\\lambda)^{1/2}, \\qquad
    w = \\operatorname{diag}(\\lambda)^{-1/2} U^\\top (\\operatorname{align}(x)_{\\rm cart} - m).

**Directions.** ``forward`` (``transform(z)``) maps :math:`z` to positions :math:`x \\in \\mathbb{R}^{3N}`
(nm) whose backbone is aligned to :math:`m`; ``inv`` maps any :math:`x` to :math:`z` after moving it
rigidly (:meth:`MixedTransform.align`: the Kabsch motion of its backbone applied to every atom; the
Z-matrix coordinates do not change under it). So ``inv(forward(z)) = z`` and
``forward(inv(x)) = align(x)``. The domain is :math:`r_i > 0`, :math:`0 < \\theta_i < \\pi`, torsions
modulo :math:`2\\pi`, and :math:`w` small enough that the identity is the optimal alignment of
:math:`m + Bw` (all of the physically relevant region); outside it the map is not injective.

**Log-determinant.** :math:`x` lives on the :math:`(3N-6)`-dimensional manifold of aligned
configurations, and :math:`\\log|\\det J|` of ``forward`` is the log volume factor of that embedding,
:math:`\\tfrac12 \\log\\det(J^\\top J)` with :math:`J = \\partial x / \\partial z`
(:math:`3N \\times (3N-6)`).
Ordering rows as (Cartesian atoms, placed atoms) and columns as (:math:`w`, each atom's
:math:`(r, \\theta, \\phi)`), :math:`J = \\begin{pmatrix} B & 0 \\\\ C & D \\end{pmatrix}` with :math:`D`
square and block-triangular (atom :math:`i` depends only on atoms placed before it), so
:math:`\\det J^\\top J = \\det(B^\\top B) \\det(D)^2` and

.. math::

    \\log|\\det J| = \\tfrac12 \\textstyle\\sum_j \\log\\lambda_j
    + \\sum_i \\big[\\log(r_i^2 |\\sin\\theta_i|)
    + \\log\\sigma^r_i + \\log\\sigma^\\theta_i\\big].

The energy in internal coordinates (:class:`~pyro_snf.molecules.internal_energy.InternalEnergy`) is
:math:`u_z(z) = u(x(z)) - \\log|\\det J(z)|`: if :math:`x` has density :math:`\\propto e^{-u(x)}` on the
aligned manifold, :math:`z` has density :math:`\\propto e^{-u_z(z)}`; it is what a flow or SNF in
:math:`z`-space targets, and samples map back to positions with ``transform(z)``.

**Rigid-body factor.** The convention above puts the density :math:`\\propto e^{-u(x)}` on the aligned
manifold with its induced volume. The Boltzmann density on all of :math:`\\mathbb{R}^{3N}` with the 6
rigid-body coordinates integrated out (Lebesgue translations, Haar rotations) gives :math:`z` the density
:math:`\\propto e^{-u_z(z) + \\log g(z)}` (the density aligned MD frames follow), with the Eckart-frame
Jacobian :math:`g = |\\det A(H)| / \\det A(H_m)`, :math:`A(H) = \\operatorname{tr}(H)\\,1 - H`,
:math:`H = \\sum_j (m_j - \\bar m)(y_j - \\bar y)^\\top` over the Cartesian atoms :math:`y = m + Bw`
(:meth:`MixedTransform.log_rigid_factor`; 0 at :math:`w = 0`). On alanine dipeptide at 1000 K,
:math:`\\log g` has standard deviation 0.06 and range :math:`\\pm 0.2` over MD frames;
``InternalEnergy(..., rigid_body=True)`` targets :math:`u_z - \\log g`.

Example (alanine dipeptide, 200 frames of seeded MD at 1000 K)::

    >>> import pytest; _ = pytest.importorskip("openmmtools")
    >>> import torch
    >>> from pyro_snf.molecules import OpenMMEnergy, alanine_dipeptide, simulate
    >>> system, topology, x0 = alanine_dipeptide()
    >>> frames = simulate(system, x0, temperature=1000.0, steps=2000, report_interval=10, seed=1)
    >>> transform = alanine_dipeptide_transform(frames, topology)
    >>> z = transform.inv(torch.as_tensor(frames))
    >>> from pyro_snf.molecules import InternalEnergy
    >>> u_z = InternalEnergy(OpenMMEnergy(system, temperature=1000.0), transform)
    >>> z.shape, transform(z).shape, u_z(z[:3]).shape
    (torch.Size([200, 60]), torch.Size([200, 66]), torch.Size([3]))

References: F. Noé, S. Olsson, J. Köhler, H. Wu, Boltzmann generators, Science 365, eaaw1147 (2019);
H. Wu, J. Köhler, F. Noé, Stochastic normalizing flows, NeurIPS 2020 (their alanine-dipeptide Z-matrix and
Cartesian atoms); bgtorch/bgflow ``MixedCoordinateTransformation`` (github.com/noegroup/bgflow);
J. Parsons et al., J. Comput. Chem. 26, 1063 (2005) (NeRF).
"""

from __future__ import annotations

import numpy as np
import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_snf.molecules.zmatrix import (
    ala2_indices,
    aligned_pca,
    check_z_matrix,
    internal_coordinates,
    kabsch,
    log_rigid_factor,
    wrap_angle,
)


class MixedTransform(TransformModule):
    """Internal coordinates ``z`` (``(..., 3N - 6)``) to aligned positions ``x`` (``(..., 3N)``, nm).

    :param z_matrix: rows ``(atom, bond, angle, torsion)`` of 0-based atom indices, shape ``(M, 4)``, each
        referring only to Cartesian atoms or atoms of earlier rows.
    :param cartesian_atoms: the ``k >= 3`` atoms kept Cartesian (PCA-whitened, 6 rigid DOF removed).
    :param reference_frames: MD positions ``(F, 3N)`` in nm fixing the alignment reference, the PCA and the
        normalisation (see the module doc); every atom must be Cartesian or placed by exactly one row.
    :param dtype: dtype of the stored statistics (computed in float64); inputs are computed in their own
        dtype, and ``.to(...)`` moves the buffers.
    """

    domain = codomain = constraints.real_vector
    bijective = True

    def __init__(self, z_matrix, cartesian_atoms, reference_frames,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(cache_size=0)
        frames = (reference_frames.detach().to("cpu", torch.float64) if isinstance(reference_frames, Tensor)
                  else torch.as_tensor(np.asarray(reference_frames, dtype=np.float64)))
        if frames.ndim != 2 or frames.shape[-1] % 3:
            raise ValueError(f"reference_frames must have shape (F, 3N), got {tuple(frames.shape)}")
        self.n_atoms = frames.shape[-1] // 3
        rows, cart, levels = check_z_matrix(z_matrix, cartesian_atoms, self.n_atoms)
        k, n_rows = len(cart), len(rows)
        self.dim_x, self.dim_z = 3 * self.n_atoms, 3 * self.n_atoms - 6
        nc = 3 * k - 6
        self.cartesian_slice, self.bond_slice = slice(0, nc), slice(nc, nc + n_rows)
        self.angle_slice = slice(nc + n_rows, nc + 2 * n_rows)
        self.torsion_slice = slice(nc + 2 * n_rows, self.dim_z)
        if len(frames) <= nc:
            raise ValueError(f"need more than {nc} reference_frames for the PCA of {k} Cartesian atoms, "
                             f"got {len(frames)}")
        pos = frames.reshape(len(frames), self.n_atoms, 3)
        ref, axes, var = aligned_pca(pos[:, torch.as_tensor(cart)])
        r, theta, phi = internal_coordinates(pos, torch.as_tensor(rows))
        for name, value in {"bond": r, "angle": theta}.items():
            if not bool((value.std(0) > 0).all()):
                atoms = rows[(value.std(0) <= 0).numpy(), 0].tolist()
                raise ValueError(f"the {name}s of atoms {atoms} do not vary over reference_frames: pass MD "
                                 "frames (at least two distinct)")
        resultant = torch.stack([phi.sin().mean(0), phi.cos().mean(0)])
        buffers = {
            "ref": ref, "pca_axes": axes, "pca_scale": var.sqrt(),
            "bond_mean": r.mean(0), "bond_std": r.std(0), "angle_mean": theta.mean(0),
            "angle_std": theta.std(0), "torsion_mean": torch.atan2(resultant[0], resultant[1]),
            # circular standard deviation sqrt(-2 log R) (informative only: torsions are not scaled)
            "torsion_std": (-2.0 * resultant.norm(dim=0).clamp_min(1e-300).log()).sqrt(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(dtype))
        self.register_buffer("rows", torch.as_tensor(rows))
        self.register_buffer("cart", torch.as_tensor(cart))
        order = np.concatenate([cart] + [rows[level, 0] for level in levels])  # placement order of atoms
        slot = np.empty(self.n_atoms, dtype=np.int64)
        slot[order] = np.arange(self.n_atoms)
        by_level = np.array([i for level in levels for i in level], dtype=np.int64)
        self.register_buffer("level_rows", torch.as_tensor(by_level))  # rows in placement order
        self.register_buffer("level_refs", torch.as_tensor(slot[rows[by_level, 1:]]))  # (M, 3) slots
        self.register_buffer("slot", torch.as_tensor(slot))
        self.level_sizes = [len(level) for level in levels]
        gather = [refs.T.flatten() for refs in self.level_refs.split(self.level_sizes)]  # levels' (a, b, c)
        self.register_buffer("level_gather", torch.cat(gather) if gather else self.slot[:0], persistent=False)

    def forward_shape(self, shape):
        return tuple(shape[:-1]) + (self.dim_x,)

    def inverse_shape(self, shape):
        return tuple(shape[:-1]) + (self.dim_z,)

    def _check(self, value: Tensor, dim: int, what: str) -> None:
        if value.shape[-1] != dim:
            raise ValueError(f"MixedTransform of {self.n_atoms} atoms takes {what} of shape (..., {dim}), "
                             f"got {tuple(value.shape)}")

    def _buf(self, name: str, like: Tensor) -> Tensor:
        return getattr(self, name).to(like.dtype)

    def _cartesian(self, z: Tensor) -> Tensor:  # m + B w, shape (..., k, 3)
        w = z[..., self.cartesian_slice] * self._buf("pca_scale", z)
        return self._buf("ref", z) + (w @ self._buf("pca_axes", z).T).unflatten(-1, (-1, 3))

    def _bonds_angles(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return (self._buf("bond_mean", z) + self._buf("bond_std", z) * z[..., self.bond_slice],
                self._buf("angle_mean", z) + self._buf("angle_std", z) * z[..., self.angle_slice])

    def _log_det(self, r: Tensor, sin_theta: Tensor, dim: int) -> Tensor:
        const = sum(self._buf(n, r).log().sum() for n in ("pca_scale", "bond_std", "angle_std"))
        return (2.0 * r.abs().log() + sin_theta.abs().log()).sum(dim) + const

    def _place_all(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, cart, r, sin theta)``: positions ``(..., 3N)``, Cartesian atoms ``(B, k, 3)`` and the rows'
        ``r, sin theta`` ``(M, B)``, ``B`` the flattened batch. Works batch-last (``(3, atoms, B)``): the
        per-level gathers copy whole rows and the arithmetic is contiguous."""
        zt = z.reshape(-1, self.dim_z).T.contiguous()
        col = lambda name: self._buf(name, z)[:, None]  # noqa: E731
        w = zt[self.cartesian_slice] * col("pca_scale")
        cart = (self._buf("ref", z).reshape(-1, 1) + self._buf("pca_axes", z) @ w).unflatten(0, (-1, 3))
        r = col("bond_mean") + col("bond_std") * zt[self.bond_slice]
        theta = col("angle_mean") + col("angle_std") * zt[self.angle_slice]
        phi = col("torsion_mean") + zt[self.torsion_slice]
        sin_theta = theta.sin()
        s = r * sin_theta
        coef = torch.stack([-r * theta.cos(), s * phi.cos(), s * phi.sin()]).index_select(1, self.level_rows)
        placed, start = cart.transpose(0, 1), 0  # (3, k, B)
        for size, level in zip(self.level_sizes, coef.split(self.level_sizes, 1)):
            c0, c1, c2 = level.unbind(0)
            refs = self.level_gather[3 * start:3 * (start + size)]
            a, b, c = placed.index_select(1, refs).unflatten(1, (3, size)).unbind(1)
            e = a - b
            e = e / (e * e).sum(0).sqrt()
            n = torch.linalg.cross(b - c, e, dim=0)
            n = n / (n * n).sum(0).sqrt()
            m = torch.linalg.cross(n, e, dim=0)
            placed = torch.cat([placed, a + c0 * e + c1 * m + c2 * n], 1)
            start += size
        x = placed.index_select(1, self.slot).permute(2, 1, 0).reshape(z.shape[:-1] + (self.dim_x,))
        return x, cart.permute(2, 0, 1), r, sin_theta

    def _call(self, z: Tensor) -> Tensor:
        self._check(z, self.dim_z, "internal coordinates z")
        return self._place_all(z)[0]

    def _alignment(self, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return kabsch(pos.index_select(-2, self.cart), self._buf("ref", pos))

    def align(self, x: Tensor) -> Tensor:
        """``x`` (``(..., 3N)``) moved rigidly so that its Cartesian atoms are optimally aligned (Kabsch)
        to the reference mean: what ``transform(transform.inv(x))`` returns."""
        self._check(x, self.dim_x, "positions x")
        pos = x.unflatten(-1, (self.n_atoms, 3))
        rot, c, c_ref = self._alignment(pos)
        return ((pos - c) @ rot.transpose(-1, -2) + c_ref).flatten(-2)

    def _inverse(self, x: Tensor) -> Tensor:
        self._check(x, self.dim_x, "positions x")
        pos = x.unflatten(-1, (self.n_atoms, 3))
        rot, c, c_ref = self._alignment(pos)
        cart = (pos.index_select(-2, self.cart) - c) @ rot.transpose(-1, -2) + c_ref
        w = ((cart - self._buf("ref", x)).flatten(-2) @ self._buf("pca_axes", x)) / self._buf("pca_scale", x)
        r, theta, phi = internal_coordinates(pos, self.rows)
        return torch.cat([w, (r - self._buf("bond_mean", x)) / self._buf("bond_std", x),
                          (theta - self._buf("angle_mean", x)) / self._buf("angle_std", x),
                          wrap_angle(phi - self._buf("torsion_mean", x))], -1)

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        """``log |det J|`` of ``forward`` at ``z`` (shape ``z.shape[:-1]``); see the module doc."""
        r, theta = self._bonds_angles(z)
        return self._log_det(r, theta.sin(), -1)

    def log_rigid_factor(self, z: Tensor) -> Tensor:
        """``log g(z)``, the rigid-body volume factor of the module doc (shape ``z.shape[:-1]``)."""
        return log_rigid_factor(self._cartesian(z), self._buf("ref", z))

    def torsion_index(self, atom: int) -> int:
        """Index in ``z`` of the torsion of the Z-matrix row placing ``atom``."""
        hit = (self.rows[:, 0] == atom).nonzero()
        if not len(hit):
            raise ValueError(f"atom {atom} is not placed by a Z-matrix row")
        return self.torsion_slice.start + int(hit[0, 0])

    def __repr__(self) -> str:  # nn.Module's, with extra_repr (Transform's prints "MixedTransform()")
        return nn.Module.__repr__(self)

    def extra_repr(self) -> str:
        return (f"n_atoms={self.n_atoms}, cartesian={self.cart.tolist()}, z_matrix_rows={len(self.rows)}, "
                f"levels={self.level_sizes}")


def alanine_dipeptide_transform(frames, topology=None, dtype: torch.dtype = torch.float64) -> MixedTransform:
    """The paper's mixed transform of alanine dipeptide from MD ``frames`` ``(F, 66)`` in nm: backbone
    N, CA, HA, CB, C Cartesian (9 whitened coordinates) and the other 17 atoms by the Z-matrix
    :data:`~pyro_snf.molecules.zmatrix.ALA2_Z_MATRIX` (51 coordinates); 60 in all.

    :param topology: the OpenMM ``Topology`` of ``frames`` (atoms found by residue and name); ``None``
        assumes the atom order of :func:`~pyro_snf.molecules.alanine_dipeptide` (openmmtools').
    """
    z_matrix, cartesian = ala2_indices(topology)
    return MixedTransform(z_matrix, cartesian, frames, dtype=dtype)


__all__ = ["MixedTransform", "alanine_dipeptide_transform"]
