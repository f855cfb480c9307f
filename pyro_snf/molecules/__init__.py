"""Molecular targets: a torch energy read from an OpenMM ``System`` and seeded MD data.

Needs the optional extra ``pip install "pyro_snf[molecules]"`` (openmm, openmmtools) to build systems and
run MD; this package imports without them (OpenMM is imported inside the functions that need it), and
``import pyro_snf`` does not import it.
"""

from pyro_snf.molecules.md import ALA2_PHI, ALA2_PSI, alanine_dipeptide, simulate
from pyro_snf.molecules.openmm_energy import (
    MOLAR_GAS_CONSTANT_R,
    ONE_4PI_EPS0,
    OpenMMEnergy,
    dihedral,
    linlogcut,
)

__all__ = [
    "ALA2_PHI",
    "ALA2_PSI",
    "MOLAR_GAS_CONSTANT_R",
    "ONE_4PI_EPS0",
    "OpenMMEnergy",
    "alanine_dipeptide",
    "dihedral",
    "linlogcut",
    "simulate",
]
