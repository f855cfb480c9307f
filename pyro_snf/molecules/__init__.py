"""Molecular targets: a torch energy read from an OpenMM ``System``, seeded MD data and internal
coordinates (a mixed Cartesian / Z-matrix transform with an exact log-determinant).

Needs the optional extra ``pip install "pyro_snf[molecules]"`` (openmm, openmmtools) to build systems and
run MD; this package imports without them (OpenMM is imported inside the functions that need it), and
``import pyro_snf`` does not import it.

Submodules for the paper's alanine-dipeptide experiment (not re-exported here): ``ala2_data`` (the shipped
MD data), ``metrics`` (torsion KL, free-energy surfaces, populations, weights) and ``experiment`` (target,
models, sampling, evaluation; ``python -m benchmarks.ala2`` runs it).
"""

from pyro_snf.molecules.internal import MixedTransform, alanine_dipeptide_transform
from pyro_snf.molecules.internal_energy import InternalEnergy
from pyro_snf.molecules.md import ALA2_PHI, ALA2_PSI, alanine_dipeptide, simulate
from pyro_snf.molecules.openmm_energy import (
    MOLAR_GAS_CONSTANT_R,
    ONE_4PI_EPS0,
    OpenMMEnergy,
    dihedral,
    linlogcut,
)
from pyro_snf.molecules.zmatrix import ALA2_ATOMS, ALA2_CARTESIAN, ALA2_Z_MATRIX

__all__ = [
    "ALA2_ATOMS",
    "ALA2_CARTESIAN",
    "ALA2_PHI",
    "ALA2_PSI",
    "ALA2_Z_MATRIX",
    "InternalEnergy",
    "MOLAR_GAS_CONSTANT_R",
    "MixedTransform",
    "ONE_4PI_EPS0",
    "OpenMMEnergy",
    "alanine_dipeptide",
    "alanine_dipeptide_transform",
    "dihedral",
    "linlogcut",
    "simulate",
]
