"""Reading a vacuum OpenMM ``System`` into torch buffers for :class:`~pyro_snf.molecules.openmm_energy.
OpenMMEnergy`: per supported force kind the atom indices and parameters in OpenMM's MD units (nm, kJ/mol,
rad, e), with the nonbonded pairs expanded to all ``i < j`` (Lorentz-Berthelot combining, exceptions
overriding, excluded pairs dropped), and the checks that refuse what the energy does not implement
(periodic boxes, cutoffs, constraints, virtual sites, parameter offsets, other forces), each error naming
the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

SUPPORTED = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce")
IGNORED = ("CMMotionRemover",)


def _md(value: Any) -> float:
    """A float in OpenMM's MD units (nm, kJ/mol, rad, e) from a Quantity or a number."""
    if hasattr(value, "value_in_unit_system"):
        from openmm import unit

        value = value.value_in_unit_system(unit.md_unit_system)
    return float(value)


def _buffer(rows: list, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(rows, dtype=np.float64), dtype=dtype)


def _index(rows: list, width: int) -> Tensor:
    return torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1, width))


class _Term(nn.Module):
    """One OpenMM force's parameters as buffers: atom indices ``idx`` and the named per-term parameters."""

    def __init__(self, kind: str, idx: Tensor, **params: Tensor) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("idx", idx)
        for name, value in params.items():
            self.register_buffer(name, value)


#: Bonded forces: (parameter getter, counter, atoms per term, parameter names after the atoms).
_BONDED = {
    "HarmonicBondForce": ("getBondParameters", "getNumBonds", 2, ("r0", "k")),
    "HarmonicAngleForce": ("getAngleParameters", "getNumAngles", 3, ("theta0", "k")),
    "PeriodicTorsionForce": ("getTorsionParameters", "getNumTorsions", 4, ("n", "phase", "k")),
}


def _read_force(force: Any, n_atoms: int, dtype: torch.dtype) -> _Term:
    """Parameters of one supported force (checked) as a :class:`_Term`."""
    kind = type(force).__name__
    if kind == "NonbondedForce":
        return _read_nonbonded(force, n_atoms, dtype)
    getter, counter, width, names = _BONDED[kind]
    rows = [getattr(force, getter)(i) for i in range(getattr(force, counter)())]
    params = {name: _buffer([_md(r[width + c]) for r in rows], dtype) for c, name in enumerate(names)}
    return _Term(kind, _index([r[:width] for r in rows], width), **params)


def _read_nonbonded(force: Any, n_atoms: int, dtype: torch.dtype) -> _Term:
    if force.getNonbondedMethod() != 0:  # openmm.NonbondedForce.NoCutoff
        raise ValueError(
            f"NonbondedForce uses nonbonded method {force.getNonbondedMethod()}; OpenMMEnergy supports only "
            "NoCutoff (a vacuum system): build it with nonbondedMethod=app.NoCutoff")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise ValueError("NonbondedForce has parameter offsets (global-parameter dependent charges or LJ); "
                         "OpenMMEnergy does not support them: remove them or bake them into the parameters")
    atoms = [[_md(v) for v in force.getParticleParameters(i)] for i in range(force.getNumParticles())]
    q, sigma, eps = np.asarray(atoms, dtype=np.float64).reshape(-1, 3).T
    i, j = np.triu_indices(n_atoms, k=1)
    table = np.stack([q[i] * q[j], 0.5 * (sigma[i] + sigma[j]), np.sqrt(eps[i] * eps[j])], axis=1)
    for e in range(force.getNumExceptions()):
        a, b, *values = force.getExceptionParameters(e)
        a, b = min(a, b), max(a, b)
        table[a * n_atoms - a * (a + 1) // 2 + b - a - 1] = [_md(v) for v in values]  # row of (a, b)
    keep = (table[:, 0] != 0.0) | (table[:, 2] != 0.0)  # zero charge product and epsilon: excluded
    params = {name: _buffer(table[keep, c], dtype) for c, name in enumerate(("qq", "sigma", "epsilon"))}
    return _Term("NonbondedForce", _index(np.stack([i, j], 1)[keep], 2), **params)


def _check_system(system: Any) -> None:
    if system.usesPeriodicBoundaryConditions():
        raise ValueError("the System uses periodic boundary conditions; OpenMMEnergy supports vacuum systems "
                         "only (no box, NoCutoff nonbonded forces)")
    if system.getNumConstraints():
        raise ValueError(f"the System has {system.getNumConstraints()} constraints; the energy lives on all "
                         "3N coordinates: rebuild it with constraints=None (and rigidWater=False)")
    virtual = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    if virtual:
        raise ValueError(f"particles {virtual[:5]} are virtual sites, which OpenMMEnergy does not support: "
                         "use a force field without virtual sites")
    for index, force in enumerate(system.getForces()):
        kind = type(force).__name__
        if kind not in SUPPORTED + IGNORED:
            raise ValueError(
                f"force {index} ({kind}) is not supported by OpenMMEnergy, which implements "
                f"{', '.join(SUPPORTED)} (and ignores {', '.join(IGNORED)}): remove it "
                f"(system.removeForce({index})) or express it with the supported forces")
