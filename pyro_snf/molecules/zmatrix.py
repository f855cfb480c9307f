"""Z-matrix geometry for :class:`~pyro_snf.molecules.MixedTransform`: internal coordinates, NeRF
placement, Kabsch alignment, the aligned PCA, the rigid-body factor, Z-matrix checks and the
alanine-dipeptide Z-matrix.

A Z-matrix row ``(i, a, b, c)`` places atom ``i`` by its bond length :math:`r = |x_i - x_a|`, bond angle
:math:`\\theta = \\angle(x_i, x_a, x_b) \\in (0, \\pi)` and torsion :math:`\\phi` = the IUPAC dihedral of
``(i, a, b, c)`` in :math:`(-\\pi, \\pi]` (as :func:`~pyro_snf.molecules.dihedral` and OpenMM; it is the
same for ``(c, b, a, i)``). Given :math:`x_a, x_b, x_c`, the natural-extension reference frame (NeRF,
Parsons et al. 2005) inverts it:

.. math::

    e = \\frac{x_a - x_b}{|x_a - x_b|}, \\quad n = \\frac{(x_b - x_c) \\times e}{|(x_b - x_c) \\times e|},
    \\quad m = n \\times e, \\qquad
    x_i = x_a + r\\,(-\\cos\\theta\\, e + \\sin\\theta \\cos\\phi\\, m + \\sin\\theta \\sin\\phi\\, n),

spherical coordinates in the orthonormal frame :math:`(e, m, n)`, so
:math:`|\\det \\partial x_i / \\partial (r, \\theta, \\phi)| = r^2 \\sin\\theta`. It needs
:math:`x_a, x_b, x_c` not collinear.

Example (place an atom and read its internal coordinates back)::

    >>> import torch
    >>> ref = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0]], dtype=torch.float64)
    >>> x = place(ref[0], ref[1], ref[2], *torch.tensor([0.1, 1.9, -2.0], dtype=torch.float64))
    >>> pos = torch.cat([ref, x[None]])
    >>> [round(float(v), 6) for v in internal_coordinates(pos, torch.tensor([[3, 0, 1, 2]]))]
    [0.1, 1.9, -2.0]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Atoms of :func:`~pyro_snf.molecules.alanine_dipeptide` (openmmtools' order) as ``"RESIDUE:NAME"``.
ALA2_ATOMS = (
    "ACE:H1", "ACE:CH3", "ACE:H2", "ACE:H3", "ACE:C", "ACE:O",
    "ALA:N", "ALA:H", "ALA:CA", "ALA:HA", "ALA:CB", "ALA:HB1", "ALA:HB2", "ALA:HB3", "ALA:C", "ALA:O",
    "NME:N", "NME:H", "NME:C", "NME:H1", "NME:H2", "NME:H3",
)
#: The Cartesian (PCA-whitened) backbone atoms of Noé et al. (2019) and Wu et al. (2020): N, CA, HA, CB, C.
ALA2_CARTESIAN = ("ALA:N", "ALA:CA", "ALA:HA", "ALA:CB", "ALA:C")
#: The paper's alanine-dipeptide Z-matrix (stochastic_normalizing_flows, experiment3_ala2; same rows),
#: reordered so that every row refers only to atoms placed before it. Rows: (atom, bond, angle, torsion).
ALA2_Z_MATRIX = (
    ("ACE:C", "ALA:N", "ALA:CA", "ALA:C"),     # torsion = phi
    ("ACE:O", "ACE:C", "ALA:N", "ALA:CA"),
    ("ALA:H", "ALA:N", "ALA:CA", "ACE:C"),
    ("ACE:CH3", "ACE:C", "ALA:N", "ALA:CA"),   # omega (ACE-ALA peptide bond)
    ("ACE:H1", "ACE:CH3", "ACE:C", "ALA:N"),
    ("ACE:H2", "ACE:CH3", "ACE:C", "ACE:H1"),
    ("ACE:H3", "ACE:CH3", "ACE:C", "ACE:H1"),
    ("ALA:HB1", "ALA:CB", "ALA:CA", "ALA:N"),
    ("ALA:HB2", "ALA:CB", "ALA:CA", "ALA:HB1"),
    ("ALA:HB3", "ALA:CB", "ALA:CA", "ALA:HB1"),
    ("NME:N", "ALA:C", "ALA:CA", "ALA:N"),     # torsion = psi
    ("ALA:O", "ALA:C", "ALA:CA", "NME:N"),
    ("NME:H", "NME:N", "ALA:C", "ALA:O"),
    ("NME:C", "NME:N", "ALA:C", "ALA:CA"),     # omega (ALA-NME peptide bond)
    ("NME:H1", "NME:C", "NME:N", "ALA:C"),
    ("NME:H2", "NME:C", "NME:N", "NME:H1"),
    ("NME:H3", "NME:C", "NME:N", "NME:H1"),
)


def ala2_indices(topology=None) -> tuple[np.ndarray, np.ndarray]:
    """``(z_matrix (17, 4), cartesian_atoms (5,))`` as atom indices of ``topology`` (an OpenMM
    ``Topology`` whose residues are ACE, ALA, NME), or of :data:`ALA2_ATOMS` when it is ``None``."""
    if topology is None:
        index = {name: i for i, name in enumerate(ALA2_ATOMS)}
    else:
        index = {f"{a.residue.name}:{a.name}": a.index for a in topology.atoms()}
        missing = [name for name in ALA2_ATOMS if name not in index]
        if missing or len(index) != len(ALA2_ATOMS):
            raise ValueError(f"topology is not alanine dipeptide (ACE-ALA-NME, 22 atoms): missing {missing}")
    rows = np.array([[index[name] for name in row] for row in ALA2_Z_MATRIX], dtype=np.int64)
    return rows, np.array([index[name] for name in ALA2_CARTESIAN], dtype=np.int64)


def wrap_angle(a: Tensor) -> Tensor:
    """``a`` modulo 2 pi, in ``(-pi, pi]``."""
    return a + 2.0 * math.pi * torch.floor((math.pi - a) / (2.0 * math.pi))


def internal_coordinates(pos: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bond lengths, angles and torsions (each ``(..., M)``) of the rows ``(M, 4)`` at positions
    ``pos`` of shape ``(..., N, 3)``."""
    x, a, b, c = (pos.index_select(-2, rows[:, k]) for k in range(4))
    u, v = x - a, b - a
    r = u.norm(dim=-1)
    theta = torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))
    b1, b2, b3 = a - x, b - a, c - b
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    phi = torch.atan2(b2.norm(dim=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))
    return r, theta, phi


def place(a: Tensor, b: Tensor, c: Tensor, r: Tensor, theta: Tensor, phi: Tensor) -> Tensor:
    """NeRF: the position (``(..., 3)``) at bond ``r`` from ``a``, angle ``theta`` at ``a`` to ``b`` and
    torsion ``phi`` of ``(new, a, b, c)``; ``a, b, c`` of shape ``(..., 3)``, the others ``(...)``."""
    e = a - b
    e = e / e.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - c, e)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(n, e)
    s = r * torch.sin(theta)
    return a + (-r * torch.cos(theta))[..., None] * e + (s * torch.cos(phi))[..., None] * m \
        + (s * torch.sin(phi))[..., None] * n


def kabsch(pos: Tensor, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The proper rotation ``R`` (``(..., 3, 3)``) and centroids minimising
    ``sum_i |R (pos_i - c) + c_ref - ref_i|^2`` for ``pos`` ``(..., k, 3)`` and ``ref`` ``(k, 3)``:
    returns ``(R, c, c_ref)``; the aligned points are ``(pos - c) @ R^T + c_ref``."""
    c, c_ref = pos.mean(-2, keepdim=True), ref.mean(-2, keepdim=True)
    h = (pos - c).transpose(-1, -2) @ (ref - c_ref)
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    flip = torch.ones(d.shape + (3,), dtype=pos.dtype, device=pos.device)
    flip[..., 2] = d
    rot = vh.transpose(-1, -2) @ (flip[..., None] * u.transpose(-1, -2))
    return rot, c, c_ref


def procrustes(cart: Tensor, tol: float = 1e-13, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Frames ``(F, k, 3)`` aligned to their own mean (iterated Kabsch); returns ``(aligned, mean)``."""
    ref = cart[0] - cart[0].mean(0)
    for _ in range(max_iter):
        rot, c, c_ref = kabsch(cart, ref)
        aligned = (cart - c) @ rot.transpose(-1, -2) + c_ref
        mean = aligned.mean(0)
        done = float((mean - ref).abs().max()) < tol
        ref = mean
        if done:
            break
    return aligned, ref


def aligned_pca(cart: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PCA of frames ``(F, k, 3)`` aligned to their mean ``m`` within the complement of the rigid motions
    of ``m``: returns ``(m (k, 3), axes (3k, 3k - 6), variances (3k - 6,))``, variances descending."""
    aligned, ref = procrustes(cart)
    full, _, _ = torch.linalg.svd(rigid_basis(ref), full_matrices=True)
    complement = full[:, 6:]  # orthonormal basis of the aligned (non-rigid) directions
    delta = (aligned - ref).reshape(len(cart), -1) @ complement
    var, axes = torch.linalg.eigh(torch.cov(delta.T).reshape(delta.shape[1], -1))
    var, axes = var.flip(0), axes.flip(1)
    if not float(var[-1]) > 1e-10 * float(var[0]):
        raise ValueError(f"reference_frames do not spread over all {len(var)} non-rigid Cartesian directions "
                         f"(PCA variances {var.tolist()}): pass more, or more varied, MD frames")
    return ref, complement @ axes, var


def log_rigid_factor(cart: Tensor, ref: Tensor) -> Tensor:
    """``log |det(tr(H) 1 - H)| - log det(tr(H0) 1 - H0)`` with ``H = sum_j (ref_j - ref_mean)
    (cart_j - cart_mean)^T`` for ``cart`` ``(..., k, 3)`` and ``H0`` its value at ``cart = ref``: the
    log of the rigid-body (Eckart-frame) volume factor, 0 at the reference."""
    m = ref - ref.mean(-2, keepdim=True)
    h = m.transpose(-1, -2) @ (cart - cart.mean(-2, keepdim=True))
    h0 = m.transpose(-1, -2) @ m
    eye = torch.eye(3, dtype=cart.dtype, device=cart.device)

    def mixed_inertia(a: Tensor) -> Tensor:
        return a.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] * eye - a

    return torch.linalg.det(mixed_inertia(h)).abs().log() - torch.linalg.det(mixed_inertia(h0)).log()


def rigid_basis(ref: Tensor) -> Tensor:
    """Orthonormal basis ``(3k, 6)`` of the infinitesimal rigid motions of the points ``ref`` ``(k, 3)``:
    translations and rotations ``omega x (ref_i - centroid)``."""
    centred = ref - ref.mean(0)
    eye = torch.eye(3, dtype=ref.dtype, device=ref.device)
    moves = [eye[j].expand_as(ref) for j in range(3)]
    moves += [torch.linalg.cross(eye[j].expand_as(ref), centred) for j in range(3)]
    q, _ = torch.linalg.qr(torch.stack([m.reshape(-1) for m in moves], 1))
    return q


def check_z_matrix(z_matrix, cartesian_atoms, n_atoms: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Validate a Z-matrix and return ``(rows (M, 4), cartesian (k,), levels)``; ``levels`` lists the
    row indices placeable together (each row's level is one more than its references' highest, the
    Cartesian atoms being level 0). Raises ``ValueError`` for an index out of range, an atom placed twice
    or never, a row with repeated atoms or one referring to an atom not placed before it."""
    rows = np.asarray(z_matrix, dtype=np.int64)
    cart = np.asarray(cartesian_atoms, dtype=np.int64).reshape(-1)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"z_matrix must have rows (atom, bond, angle, torsion), shape (M, 4); got "
                         f"shape {rows.shape}")
    if len(cart) < 3:
        raise ValueError(f"need at least 3 cartesian_atoms (6 rigid-body degrees of freedom are removed "
                         f"from them), got {len(cart)}")
    bad = [int(i) for i in np.concatenate([cart, rows.reshape(-1)]) if not 0 <= i < n_atoms]
    if bad:
        raise ValueError(f"atom indices {bad[:5]} out of range for {n_atoms} atoms")
    placed_by = {}
    for what, atom in [("cartesian_atoms", int(i)) for i in cart] + [(f"z_matrix row {r}", int(row[0]))
                                                                       for r, row in enumerate(rows)]:
        if atom in placed_by:
            raise ValueError(f"atom {atom} is placed twice ({placed_by[atom]} and {what}); each atom must "
                             "be either Cartesian or the first entry of exactly one Z-matrix row")
        placed_by[atom] = what
    missing = sorted(set(range(n_atoms)) - set(placed_by))
    if missing:
        raise ValueError(f"atoms {missing} are never placed: add a Z-matrix row for each or make them "
                         "Cartesian")
    level = {int(i): 0 for i in cart}
    for r, row in enumerate(rows):
        if len(set(row.tolist())) != 4:
            raise ValueError(f"z_matrix row {r} {row.tolist()} repeats an atom; it needs four distinct atoms")
        late = [int(j) for j in row[1:] if int(j) not in level]
        if late:
            raise ValueError(f"z_matrix row {r} places atom {row[0]} relative to atom {late[0]}, which is "
                             "not placed before it (not Cartesian, not in an earlier row): reorder the rows")
        level[int(row[0])] = 1 + max(level[int(j)] for j in row[1:])
    depth = max([level[int(row[0])] for row in rows], default=0)
    levels = [[r for r, row in enumerate(rows) if level[int(row[0])] == d] for d in range(1, depth + 1)]
    return rows, cart, levels
