"""Seeded molecular dynamics with OpenMM: training and reference data for molecular targets.

:func:`simulate` runs Langevin dynamics (OpenMM's ``LangevinMiddleIntegrator``: BAOAB-type splitting,
friction ``gamma``, time step ``dt``) at temperature ``T`` and records positions every
``report_interval`` steps. Seeded on the Reference platform it is reproducible bit for bit: the
initial velocities (Maxwell-Boltzmann at ``T``) and the integrator's noise both come from ``seed``.
Frames are correlated. The paper's alanine-dipeptide data are Langevin MD at 1000 K, where the backbone
torsion ``phi`` (:data:`ALA2_PHI`) is positive in 9-17% of frames (16.8 +- 4.2% of a 1 ns run here, seed 11;
10.5 +- 1.2% of a 10 ns run, seed 2024; 9.1 +- 0.4% of a 40 ns run, seed 13; block standard errors);
at 300 K 1 ns gives 0.05% (too few to learn that basin from).

Cost measured here (22 atoms, 1 fs, one shared CPU core, a frame every 100 steps): 1 ns (10^6 steps)
takes 17-22 s on the Reference platform (about 0.05 ns per second); the CPU platform is several times
slower for so small a system (about 140 s per ns). Recording every step costs about 60 us more per step.

Example::

    >>> import pytest; _ = pytest.importorskip("openmmtools")
    >>> system, topology, x0 = alanine_dipeptide()
    >>> x0.shape, topology.getNumAtoms()
    ((66,), 22)
    >>> frames = simulate(system, x0, temperature=1000.0, steps=200, report_interval=50, seed=1)
    >>> frames.shape
    (4, 66)
"""

from __future__ import annotations

from typing import Any

import numpy as np

PLATFORMS = ("Reference", "CPU")
#: Backbone torsions of :func:`alanine_dipeptide` (0-based atoms): phi = C(ACE)-N-CA-C, psi = N-CA-C-N(NME).
ALA2_PHI = (4, 6, 8, 14)
ALA2_PSI = (6, 8, 14, 16)


def alanine_dipeptide() -> tuple[Any, Any, np.ndarray]:
    """Alanine dipeptide in vacuum (AMBER ff96, 22 atoms, no constraints) from ``openmmtools``.

    It is the system of Noé et al. (2019) and Wu et al. (2020). Returns ``(system, topology, x0)`` with
    ``x0`` the initial positions, shape ``(66,)`` in nm (atom-major, as :class:`OpenMMEnergy` takes them).
    Needs no network (the parameters ship with openmmtools).
    """
    from openmm import unit
    from openmmtools.testsystems import AlanineDipeptideVacuum

    test_system = AlanineDipeptideVacuum(constraints=None)
    x0 = np.asarray(test_system.positions.value_in_unit(unit.nanometer), dtype=np.float64).reshape(-1)
    return test_system.system, test_system.topology, x0


def simulate(
    system: Any,
    positions: Any,
    temperature: float = 1000.0,
    steps: int = 10_000,
    report_interval: int = 100,
    seed: int = 1,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    platform: str = "Reference",
    minimize: bool = False,
    threads: int = 1,
) -> np.ndarray:
    """Langevin MD of ``system`` from ``positions``; the recorded positions, shape ``(frames, 3N)`` in nm.

    :param system: an ``openmm.System``.
    :param positions: initial positions in nm, shape ``(3N,)`` or ``(N, 3)`` (or an OpenMM Quantity).
    :param temperature: temperature in K (of the thermostat and the initial velocities).
    :param steps: number of integration steps; ``frames = steps // report_interval``.
    :param report_interval: steps between recorded frames (the first frame is after ``report_interval``
        steps, not the initial positions).
    :param seed: a positive integer seeding the initial velocities and the Langevin noise (OpenMM reads a
        seed of 0 as "pick one at random", so it is refused).
    :param timestep_fs: time step in fs.
    :param friction_per_ps: friction coefficient in 1/ps.
    :param platform: ``"Reference"`` (bitwise reproducible) or ``"CPU"``.
    :param minimize: minimise the energy (L-BFGS) before the dynamics.
    :param threads: threads of the CPU platform.
    """
    import openmm
    from openmm import unit

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 < seed < 2**31:
        raise ValueError(f"seed must be an integer in [1, 2^31), got {seed!r} (OpenMM treats 0 as random)")
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    if not (report_interval >= 1 and steps >= report_interval):
        raise ValueError(f"need steps >= report_interval >= 1, got steps={steps}, "
                         f"report_interval={report_interval}")
    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(unit.nanometer)
    n_atoms = system.getNumParticles()
    xyz = np.asarray(positions, dtype=np.float64).reshape(n_atoms, 3)

    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction_per_ps / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(int(seed))
    properties = {"Threads": str(int(threads))} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    try:
        context.setPositions(xyz * unit.nanometer)
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, int(seed))
        frames = np.empty((steps // report_interval, 3 * n_atoms), dtype=np.float64)
        for k in range(len(frames)):
            integrator.step(report_interval)
            state = context.getState(getPositions=True)
            frames[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).reshape(-1)
    finally:
        del context, integrator
    return frames
