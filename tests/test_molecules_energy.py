"""OpenMMEnergy against OpenMM's Reference platform, term by term, on alanine dipeptide (vacuum, ff96).

Configurations: seeded Langevin MD at 1000 K (pyro_snf.molecules.simulate) plus Gaussian noise, so that
energies span bonded minima to strained geometries (-80 to ~2000 kJ/mol). Tolerances: float64 1e-5
relative per force group (to max(|E|, 1 kJ/mol); measured on 3,000 configurations: 7e-15) and 1e-5
relative per-configuration force norm (measured 1e-14); float32 (parameters and positions rounded to 24
bits) 1e-4 relative to |E| + 1 kJ/mol per group (measured 1e-5, at most 1.4e-3 kJ/mol) and 1e-3 relative
forces (measured 2.3e-5).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmtools")

from openmm import unit  # noqa: E402

from pyro_snf.energy import AnnealedEnergy  # noqa: E402
from pyro_snf.molecules import (  # noqa: E402
    MOLAR_GAS_CONSTANT_R,
    OpenMMEnergy,
    alanine_dipeptide,
    linlogcut,
    simulate,
)

KJ = unit.kilojoule_per_mole


@pytest.fixture(scope="module")
def ala2():
    system, _, x0 = alanine_dipeptide()
    for index, force in enumerate(system.getForces()):
        force.setForceGroup(index)
    return system, x0


@pytest.fixture(scope="module")
def configs(ala2) -> np.ndarray:
    system, x0 = ala2
    frames = simulate(system, x0, temperature=1000.0, steps=4000, report_interval=40, seed=7)
    rng = np.random.default_rng(0)
    return np.concatenate([frames, frames + 0.005 * rng.standard_normal(frames.shape),
                           frames[:50] + 0.02 * rng.standard_normal(frames[:50].shape)])


def reference_context(system):
    platform = openmm.Platform.getPlatformByName("Reference")
    return openmm.Context(system, openmm.VerletIntegrator(0.001), platform)


def openmm_reference(system, xs: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Energies (configs, groups) in kJ/mol and forces (configs, groups, 3N) in kJ/mol/nm."""
    context = reference_context(system)
    energies = np.zeros((len(xs), len(groups)))
    forces = np.zeros((len(xs), len(groups), xs.shape[-1]))
    for c, x in enumerate(xs):
        context.setPositions(x.reshape(-1, 3) * unit.nanometer)
        for g, group in enumerate(groups):
            state = context.getState(getEnergy=True, getForces=True, groups={group})
            energies[c, g] = state.getPotentialEnergy().value_in_unit(KJ)
            forces[c, g] = state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer).reshape(-1)
    return energies, forces


def torch_terms(energy: OpenMMEnergy, xs: np.ndarray, dtype, groups) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    terms = energy.energy_terms(x)
    energies, forces = [], []
    for group in groups:
        e = terms.get(group, x.new_zeros(len(xs)))
        (g,) = torch.autograd.grad(e.sum(), x, allow_unused=True) if e.requires_grad else (None,)
        energies.append(e.detach().double().numpy())
        forces.append(np.zeros(xs.shape) if g is None else -g.double().numpy())
    return np.stack(energies, 1), np.stack(forces, 1)


def compare(system, xs, dtype, groups=None):
    groups = list(range(system.getNumForces())) if groups is None else groups
    energy = OpenMMEnergy(system, temperature=300.0)
    e_ref, f_ref = openmm_reference(system, xs, groups)
    e_t, f_t = torch_terms(energy, xs, dtype, groups)
    de = np.abs(e_t - e_ref)
    df = np.linalg.norm(f_t - f_ref, axis=-1) / np.maximum(np.linalg.norm(f_ref, axis=-1), 1.0)
    return e_ref, de, df


def test_energy_and_forces_per_force_group_float64(ala2, configs):
    system, _ = ala2
    e_ref, de, df = compare(system, configs, torch.float64)
    assert np.ptp(e_ref.sum(1)) > 500.0  # the set spans a wide energy range
    assert (de <= 1e-5 * np.maximum(np.abs(e_ref), 1.0)).all(), de.max(0)
    assert (df <= 1e-5).all(), df.max(0)


def test_total_reduced_energy_float64(ala2, configs):
    system, _ = ala2
    energy = OpenMMEnergy(system, temperature=1000.0)
    ctx = reference_context(system)
    ref = []
    for x in configs[:50]:
        ctx.setPositions(x.reshape(-1, 3) * unit.nanometer)
        ref.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    u = energy(torch.tensor(configs[:50], dtype=torch.float64)).numpy()
    kT = MOLAR_GAS_CONSTANT_R * 1000.0
    assert math.isclose(energy.kT, kT) and math.isclose(kT, 8.3144626, rel_tol=1e-8)
    np.testing.assert_allclose(u * kT, ref, rtol=1e-8, atol=1e-5)


def test_float32_agreement(ala2, configs):
    system, _ = ala2
    groups = list(range(system.getNumForces()))
    e_ref, de, df = compare(system, configs, torch.float32, groups)
    scale = np.abs(e_ref) + 1.0
    assert (de <= 1e-4 * scale).all(), (de / scale).max(0)
    assert (df <= 1e-3).all(), df.max(0)


def test_torsion_sign_convention_with_asymmetric_phases(ala2, configs):
    """Phases 0 and pi (all of ff96's) hide the sign of phi; random phases expose it."""
    system = copy.deepcopy(ala2[0])
    torsions = next(f for f in system.getForces() if isinstance(f, openmm.PeriodicTorsionForce))
    rng = np.random.default_rng(1)
    for t in range(torsions.getNumTorsions()):
        i, j, k, m, n, _, kk = torsions.getTorsionParameters(t)
        torsions.setTorsionParameters(t, i, j, k, m, n, rng.uniform(-np.pi, np.pi), kk)
    group = torsions.getForceGroup()
    _, de, df = compare(system, configs[::10], torch.float64, [group])
    assert de.max() < 1e-8 and df.max() < 1e-8


def _with_force(system, force):
    system = copy.deepcopy(system)
    system.addForce(force)
    return system


def test_unsupported_systems_raise(ala2):
    system = ala2[0]
    with pytest.raises(ValueError, match="CustomBondForce"):
        OpenMMEnergy(_with_force(system, openmm.CustomBondForce("r")))
    cutoff = copy.deepcopy(system)
    nonbonded = next(f for f in cutoff.getForces() if isinstance(f, openmm.NonbondedForce))
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(ValueError, match="NoCutoff"):
        OpenMMEnergy(cutoff)
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.PME)
    with pytest.raises(ValueError, match="periodic"):
        OpenMMEnergy(cutoff)
    constrained = copy.deepcopy(system)
    constrained.addConstraint(0, 1, 0.1)
    with pytest.raises(ValueError, match="constraints=None"):
        OpenMMEnergy(constrained)
    virtual = copy.deepcopy(system)
    virtual.addParticle(0.0)
    virtual.setVirtualSite(virtual.getNumParticles() - 1, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    with pytest.raises(ValueError, match="virtual site"):
        OpenMMEnergy(virtual)


def test_batched_shapes_and_errors(ala2, configs):
    energy = OpenMMEnergy(ala2[0])
    x = torch.tensor(configs[:6])
    flat = energy(x)
    assert flat.shape == (6,)
    torch.testing.assert_close(energy(x.reshape(2, 3, 66)), flat.reshape(2, 3))
    torch.testing.assert_close(energy(x[0]), flat[0])
    with pytest.raises(ValueError, match=r"\(\.\.\., 66\)"):
        energy(x[:, :60])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_device_and_dtype_follow(ala2, configs, device):
    energy = OpenMMEnergy(ala2[0], dtype=torch.float32).to(device)
    x64 = torch.tensor(configs[:4], device=device)
    assert energy(x64.float()).dtype == torch.float32 and energy(x64.float()).device.type == device
    energy = energy.to(torch.float64)
    assert all(b.dtype in (torch.float64, torch.int64) for b in energy.buffers())
    u = energy(x64)
    assert u.dtype == torch.float64 and u.device.type == device
    reference = OpenMMEnergy(ala2[0])(torch.tensor(configs[:4]))
    torch.testing.assert_close(u.cpu(), reference, rtol=1e-4, atol=1e-4)  # float32-rounded parameters


def test_linlogcut_and_annealed_energy(ala2, configs):
    u = torch.tensor([-5.0, 10.0, 100.0, 1e4, 1e12, math.inf, math.nan], dtype=torch.float64)
    cut = linlogcut(u, high=100.0, max=1e6)
    cap = 100.0 + math.log1p(1e6 - 100.0)
    expected = [-5.0, 10.0, 100.0, 100.0 + math.log1p(1e4 - 100.0), cap, cap, cap]
    torch.testing.assert_close(cut, torch.tensor(expected, dtype=torch.float64))
    plain, cutoff = OpenMMEnergy(ala2[0]), OpenMMEnergy(ala2[0], cut=(50.0, 1e4))
    x = torch.tensor(configs[:20])
    torch.testing.assert_close(cutoff(x), linlogcut(plain(x), 50.0, 1e4))
    assert plain.cut is None
    with pytest.raises(ValueError, match="high < max"):
        OpenMMEnergy(ala2[0], cut=(10.0, 1.0))
    value, grad = AnnealedEnergy(plain, None).value_and_grad(x)  # the blocks' energy interface
    assert value.shape == (20,) and grad.shape == (20, 66) and torch.isfinite(grad).all()


def test_md_is_seeded(ala2):
    system, x0 = ala2
    a = simulate(system, x0, steps=300, report_interval=100, seed=3)
    b = simulate(system, x0.reshape(-1, 3), steps=300, report_interval=100, seed=3)
    c = simulate(system, x0, steps=300, report_interval=100, seed=4)
    assert a.shape == (3, 66) and np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="seed"):
        simulate(system, x0, steps=10, report_interval=5, seed=0)


def test_core_package_imports_without_openmm():
    code = ("import sys; sys.modules['openmm'] = None; sys.modules['openmmtools'] = None\n"
            "import pyro_snf; assert 'pyro_snf.molecules' not in sys.modules\n"
            "import pyro_snf.molecules; assert pyro_snf.molecules.OpenMMEnergy")
    subprocess.run([sys.executable, "-c", code], check=True)
