"""MixedTransform (internal coordinates) on alanine dipeptide: layout, exact round trips, the log-determinant
against autograd's 0.5 logdet(J^T J), the rigid-body factor against the full 66 x 66 Jacobian, torsion
periodicity, shapes, dtypes, the internal energy and Z-matrix errors.

Reference statistics: 1,000 frames of seeded Langevin MD at 1000 K (20,000 steps, Reference platform,
about 0.6 s). Measured here (float64): x -> z -> x against the aligned x 2e-15 nm, z -> x -> z 5e-14
(z perturbed by 0.3), log|det J| against autograd 4e-16 relative; float32 positions within 1.5e-7 nm.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmtools")

import pyro.distributions as dist  # noqa: E402

from pyro_snf.energy import AnnealedEnergy  # noqa: E402
from pyro_snf.molecules import (  # noqa: E402
    ALA2_PHI,
    InternalEnergy,
    MixedTransform,
    OpenMMEnergy,
    alanine_dipeptide,
    alanine_dipeptide_transform,
    dihedral,
    simulate,
)
from pyro_snf.molecules.zmatrix import ala2_indices, procrustes  # noqa: E402

# The Z-matrix and Cartesian block of Wu et al. (2020), experiment3_ala2 (rows in their order).
PAPER_Z = [[0, 1, 4, 6], [1, 4, 6, 8], [2, 1, 4, 0], [3, 1, 4, 0], [4, 6, 8, 14], [5, 4, 6, 8], [7, 6, 8, 4],
           [11, 10, 8, 6], [12, 10, 8, 11], [13, 10, 8, 11], [15, 14, 8, 16], [16, 14, 8, 6],
           [17, 16, 14, 15], [18, 16, 14, 8], [19, 18, 16, 14], [20, 18, 16, 19], [21, 18, 16, 19]]
PAPER_CARTESIAN = [6, 8, 9, 10, 14]


@pytest.fixture(scope="module")
def ala2():
    return alanine_dipeptide()


@pytest.fixture(scope="module")
def frames(ala2) -> torch.Tensor:
    system, _, x0 = ala2
    return torch.as_tensor(simulate(system, x0, temperature=1000.0, steps=20_000, report_interval=20, seed=5))


@pytest.fixture(scope="module")
def transform(ala2, frames) -> MixedTransform:
    return alanine_dipeptide_transform(frames.numpy(), ala2[1])


@pytest.fixture(scope="module")
def held_out(ala2) -> torch.Tensor:
    system, _, x0 = ala2
    return torch.as_tensor(simulate(system, x0, temperature=1000.0, steps=4000, report_interval=40, seed=9))


def wrapped(d: torch.Tensor) -> torch.Tensor:
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


def random_rigid(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=x.dtype))
    q = q * torch.sign(torch.linalg.det(q))  # proper rotation
    return (x.unflatten(-1, (-1, 3)) @ q.T + torch.randn(3, generator=g, dtype=x.dtype)).flatten(-2)


def test_layout_matches_the_paper(ala2, transform, held_out):
    topology = ala2[1]
    names = {f"{a.residue.name}:{a.name}": a.index for a in topology.atoms()}
    assert transform.cart.tolist() == [names[n] for n in ("ALA:N", "ALA:CA", "ALA:HA", "ALA:CB", "ALA:C")]
    assert transform.cart.tolist() == PAPER_CARTESIAN
    assert sorted(transform.rows.tolist()) == sorted(PAPER_Z)
    z_none, cart_none = ala2_indices(None)
    assert z_none.tolist() == transform.rows.tolist() and cart_none.tolist() == PAPER_CARTESIAN
    assert transform.dim_z == 60 and transform.dim_x == 66 and transform.level_sizes == [3, 7, 3, 4]
    sizes = [len(range(60)[s]) for s in (transform.cartesian_slice, transform.bond_slice,
                                         transform.angle_slice, transform.torsion_slice)]
    assert sizes == [9, 17, 17, 17]
    phi = transform.torsion_index(4)  # ACE:C placed by (C, N, CA, C): its torsion is phi
    assert phi == 43 and transform.rows[phi - 43].tolist() == [4, 6, 8, 14]
    x = held_out[:10]  # same convention as OpenMM's (and pyro_snf.molecules.dihedral's) phi
    torch.testing.assert_close(wrapped(transform.inv(x)[:, phi] + transform.torsion_mean[0]),
                               dihedral(x, torch.tensor([ALA2_PHI]))[:, 0], atol=1e-12, rtol=0)


def test_pca_drops_exactly_the_rigid_directions(transform, frames):
    aligned, _ = procrustes(frames.reshape(-1, 22, 3)[:, transform.cart])
    eig = torch.linalg.eigvalsh(torch.cov(aligned.reshape(len(aligned), -1).T)).flip(0)
    assert eig[-6:].abs().max() < 1e-12 * eig[0]  # 6 zero-variance (rigid) components
    torch.testing.assert_close(eig[:9], transform.pca_scale ** 2, rtol=1e-8, atol=0.0)
    z = transform.inv(frames)  # whitened and standardised over the reference frames
    torch.testing.assert_close(z[:, :43].mean(0), torch.zeros(43, dtype=z.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(z[:, :43].std(0), torch.ones(43, dtype=z.dtype), atol=1e-10, rtol=0)
    assert (z[:, 43:].abs() <= math.pi).all()


def test_round_trip_x_z_x(transform, frames, held_out):
    for x in (frames, held_out, random_rigid(held_out, 0)):
        aligned = transform.align(x)
        err = (transform(transform.inv(x)) - aligned).abs().max()
        assert err < 1e-10, err
    moved = random_rigid(held_out, 1)
    torch.testing.assert_close(transform.inv(moved), transform.inv(held_out), atol=1e-10, rtol=0)
    aligned = transform.align(moved).unflatten(-1, (22, 3))
    original = held_out.unflatten(-1, (22, 3))  # align is a rigid motion of the whole molecule
    torch.testing.assert_close(torch.cdist(aligned, aligned), torch.cdist(original, original),
                               atol=1e-12, rtol=0)


def test_round_trip_z_x_z(transform, held_out):
    z = transform.inv(held_out)
    g = torch.Generator().manual_seed(2)
    z = z + 0.3 * torch.randn(z.shape, generator=g, dtype=z.dtype)
    back = transform.inv(transform(z))
    assert (back[:, :43] - z[:, :43]).abs().max() < 1e-10
    assert wrapped(back[:, 43:] - z[:, 43:]).abs().max() < 1e-10


def test_log_det_matches_autograd_volume_factor(transform, held_out):
    z = transform.inv(held_out[::25])
    g = torch.Generator().manual_seed(3)
    points = torch.cat([z, z + 0.5 * torch.randn(z.shape, generator=g, dtype=z.dtype)])
    for point in points:
        jac = torch.autograd.functional.jacobian(transform, point)
        assert jac.shape == (66, 60)
        expected = 0.5 * torch.logdet(jac.T @ jac)
        got = transform.log_abs_det_jacobian(point, transform(point))
        assert abs(float(got / expected) - 1.0) < 1e-8, (float(got), float(expected))


def _rotate(v: torch.Tensor) -> torch.Tensor:
    """3x3 rotation exp([v]_x) (differentiable)."""
    o = torch.zeros((), dtype=v.dtype)
    skew = torch.stack([torch.stack([o, -v[2], v[1]]), torch.stack([v[2], o, -v[0]]),
                        torch.stack([-v[1], v[0], o])])
    return torch.linalg.matrix_exp(skew)


def test_rigid_body_factor_completes_the_full_jacobian(transform, held_out):
    """(z, rotation, translation) -> x is square (66 x 66); its log|det| is log|det J| + log g + const."""
    centre = transform.ref.mean(0)

    def full(v):
        x = transform(v[:60]).reshape(22, 3)
        return ((x - centre) @ _rotate(v[60:63]).T + centre + v[63:]).reshape(-1)

    z = transform.inv(held_out[::50])
    g = torch.Generator().manual_seed(6)
    z = torch.cat([z, z + 0.5 * torch.randn(z.shape, generator=g, dtype=z.dtype)])
    gaps = []
    for point in z:
        jac = torch.autograd.functional.jacobian(full, torch.cat([point, point.new_zeros(6)]))
        log_j = transform.log_abs_det_jacobian(point, transform(point))
        gaps.append(float(torch.linalg.slogdet(jac)[1] - log_j - transform.log_rigid_factor(point)))
    assert np.ptp(gaps) < 1e-9, gaps
    assert float(transform.log_rigid_factor(torch.zeros(60, dtype=z.dtype))) == pytest.approx(0.0, abs=1e-12)
    spread = transform.log_rigid_factor(transform.inv(held_out)).std()
    assert 0.01 < spread < 0.2  # small but not negligible for exact reweighting against MD


def test_torsion_periodicity(transform, held_out):
    z = transform.inv(held_out[:20])
    shift = torch.zeros_like(z)
    turns = torch.randint(-3, 4, (20, 17), generator=torch.Generator().manual_seed(4)).to(z.dtype)
    shift[:, 43:] = 2 * math.pi * turns
    assert shift.abs().max() > 0
    torch.testing.assert_close(transform(z + shift), transform(z), atol=1e-10, rtol=0)
    x = transform(z)
    torch.testing.assert_close(transform.log_abs_det_jacobian(z + shift, x),
                               transform.log_abs_det_jacobian(z, x), atol=1e-12, rtol=0)


def test_batched_shapes_and_pyro_distribution(transform, held_out):
    z = transform.inv(held_out[:6])
    x = transform(z)
    x23 = transform(z.reshape(2, 3, 60))
    assert x23.shape == (2, 3, 66) and transform.inv(x23).shape == (2, 3, 60)
    torch.testing.assert_close(x23.reshape(6, 66), x)
    torch.testing.assert_close(transform(z[0]), x[0])
    assert transform.log_abs_det_jacobian(z.reshape(2, 3, 60), x23).shape == (2, 3)
    assert transform.forward_shape((5, 60)) == (5, 66) and transform.inverse_shape((5, 66)) == (5, 60)
    with pytest.raises(ValueError, match=r"\(\.\.\., 60\)"):
        transform(x)
    with pytest.raises(ValueError, match=r"\(\.\.\., 66\)"):
        transform.inv(z)
    base = dist.Normal(torch.zeros(60, dtype=torch.float64), 1.0).to_event(1)
    flow = dist.TransformedDistribution(base, [transform])
    sample = flow.sample((4,))
    assert sample.shape == (4, 66)
    zs = transform.inv(sample)
    torch.testing.assert_close(flow.log_prob(sample),
                               base.log_prob(zs) - transform.log_abs_det_jacobian(zs, sample))


def test_float32(transform, held_out):
    z64 = transform.inv(held_out[:50])
    x64, ld64 = transform(z64), transform.log_abs_det_jacobian(z64, transform(z64))
    for t in (transform, alanine_dipeptide_transform(held_out.numpy(), dtype=torch.float32)):
        x32 = t(z64.float())
        assert x32.dtype == torch.float32 and torch.isfinite(x32).all()
        if t is transform:
            torch.testing.assert_close(x32.double(), x64, atol=2e-5, rtol=0)
            ld32 = t.log_abs_det_jacobian(z64.float(), x32)
            assert ld32.dtype == torch.float32
            torch.testing.assert_close(ld32.double(), ld64, rtol=1e-5, atol=0)
        assert t.inv(x32).dtype == torch.float32
    moved = copy.deepcopy(transform).to(torch.float32)  # buffers follow .to(); indices stay int64
    assert moved.ref.dtype == torch.float32 and moved.rows.dtype == torch.int64
    assert transform.ref.dtype == torch.float64


def test_internal_energy(ala2, transform, held_out):
    energy = OpenMMEnergy(ala2[0], temperature=1000.0)
    u_z = InternalEnergy(energy, transform)
    assert u_z.dim == 60 and u_z.log_Z is None
    z = transform.inv(held_out[:8])
    x = transform(z)
    expected = energy(x) - transform.log_abs_det_jacobian(z, x)
    torch.testing.assert_close(u_z(z), expected)
    torch.testing.assert_close(u_z.energy(z[3]), expected[3])
    # the energy is invariant under the alignment: u(x) at the MD frames themselves
    torch.testing.assert_close(energy(x), energy(held_out[:8]), rtol=1e-9, atol=1e-9)
    rigid = InternalEnergy(energy, transform, rigid_body=True)
    torch.testing.assert_close(rigid(z), expected - transform.log_rigid_factor(z))
    value, grad = AnnealedEnergy(u_z, None).value_and_grad(z)  # the blocks' energy interface
    assert value.shape == (8,) and grad.shape == (8, 60) and torch.isfinite(grad).all()


def test_bad_z_matrix(frames):
    rows, cart = ala2_indices(None)
    MixedTransform(rows, cart, frames)  # valid
    with pytest.raises(ValueError, match="not placed before it"):
        MixedTransform(PAPER_Z, cart, frames)  # the paper's order places H1 (0) before CH3 (1)
    with pytest.raises(ValueError, match="placed twice"):
        MixedTransform(np.concatenate([rows, rows[:1]]), cart, frames)
    with pytest.raises(ValueError, match="placed twice"):
        MixedTransform(rows, np.append(cart, rows[0, 0]), frames)
    with pytest.raises(ValueError, match=r"atoms \[21\] are never placed"):
        MixedTransform(rows[:-1], cart, frames)
    with pytest.raises(ValueError, match="out of range"):
        MixedTransform(np.where(rows == 21, 22, rows), cart, frames)
    repeated = rows.copy()
    repeated[3, 3] = repeated[3, 1]
    with pytest.raises(ValueError, match="repeats an atom"):
        MixedTransform(repeated, cart, frames)
    with pytest.raises(ValueError, match="shape"):
        MixedTransform(rows[:, :3], cart, frames)
    with pytest.raises(ValueError, match="at least 3"):
        MixedTransform(rows, cart[:2], frames)
    with pytest.raises(ValueError, match="more than 9"):
        MixedTransform(rows, cart, frames[:5])
    with pytest.raises(ValueError, match="do not vary"):
        MixedTransform(rows, cart, frames[:1].expand(20, 66) + 1e-3 * torch.randn(20, 1, dtype=frames.dtype))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_device_follows(transform, held_out, device):
    moved = copy.deepcopy(transform).to(device)
    x = held_out[:4].to(device)
    z = moved.inv(x)
    assert z.device.type == device and moved(z).device.type == device
    torch.testing.assert_close(z.cpu(), transform.inv(held_out[:4]))
    built = MixedTransform(transform.rows, transform.cart, held_out.to(device))  # frames on any device
    torch.testing.assert_close(built.ref, alanine_dipeptide_transform(held_out).ref)
