"""Shipped alanine-dipeptide MD data: a training set and an independent long reference, both from seeded
Langevin MD at 1000 K (:func:`~pyro_snf.molecules.simulate`, Reference platform, 1 fs, friction 1/ps).

- ``ala2_1000K_train.npz``: ``positions`` ``(10000, 66)`` float32 (nm), a frame every 4 ps of 40 ns
  (seed 13) from openmmtools' initial structure, the frames of the first 10 ps dropped. 40 ns, not the
  1 ns of an earlier version, so that its cis/trans amide torsions are near equilibrium: the paper's KL
  compares samples with the training set, and against 1 ns an exact sampler scored 1.08 on gamma3
  (``data/README.md``).
- ``ala2_1000K_reference.npz``: per-frame quantities only, a frame every 200 fs of 10 ns of an independent
  run (seed 2024, also after 10 ps of equilibration): ``torsions`` ``(50000, 7)`` float32 (rad, the columns
  :data:`ALA2_TORSION_NAMES`, atoms :data:`ALA2_TORSIONS`) and ``energy`` ``(50000,)`` float32, the reduced
  energy ``u = E / kT`` at 1000 K (no cut).

The torsions are the paper's five (``phi_nb, gamma1, psi_nb, gamma2, gamma3``: the Z-matrix rows 0, 1, 2, 10
and 12 of the released notebook, ``experiment3_ala2_MC_RNVP.ipynb``, which labels them phi, gamma1, psi,
gamma2, gamma3 although their atoms are not the backbone phi/psi) and the backbone ``phi`` (C-N-CA-C) and
``psi`` (N-CA-C-N). ``python -m pyro_snf.molecules.ala2_data OUT_DIR`` regenerates both files (709 s + 375 s
of MD measured on one core); provenance in ``pyro_snf/molecules/data/README.md``.

Example::

    >>> x = load_ala2_training()
    >>> x.shape, x.dtype
    ((10000, 66), dtype('float32'))
    >>> ref = load_ala2_reference()
    >>> ref["torsions"].shape, ref["energy"].shape
    ((50000, 7), (50000,))
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

DATA_DIR = Path(__file__).with_name("data")
TRAIN_FILE, REFERENCE_FILE = "ala2_1000K_train.npz", "ala2_1000K_reference.npz"
#: Atom quadruples (0-based, openmmtools' order) of the reference torsions.
ALA2_TORSIONS = {
    "phi_nb": (0, 1, 4, 6),      # notebook "phi": H1-CH3-C-N (ACE methyl rotation)
    "gamma1": (1, 4, 6, 8),      # CH3-C-N-CA (ACE-ALA peptide bond, omega)
    "psi_nb": (2, 1, 4, 0),      # notebook "psi": H2-CH3-C-H1 (an improper of the ACE methyl)
    "gamma2": (15, 14, 8, 16),   # O-C-CA-N (improper at ALA:C)
    "gamma3": (17, 16, 14, 15),  # H-N-C-O (NME amide H)
    "phi": (4, 6, 8, 14),        # backbone phi, C(ACE)-N-CA-C
    "psi": (6, 8, 14, 16),       # backbone psi, N-CA-C-N(NME)
}
ALA2_TORSION_NAMES = tuple(ALA2_TORSIONS)
PAPER_TORSION_NAMES = ("phi_nb", "gamma1", "psi_nb", "gamma2", "gamma3")
SETTINGS = {
    "train": {"seed": 13, "steps": 40_000_000, "report_interval": 4000},
    "reference": {"seed": 2024, "steps": 10_000_000, "report_interval": 200},
}
COMMON = {"temperature": 1000.0, "timestep_fs": 1.0, "friction_per_ps": 1.0, "platform": "Reference",
          "equilibration_steps": 10_000}


def ala2_torsions(x) -> np.ndarray:
    """The :data:`ALA2_TORSIONS` of positions ``x`` ``(..., 66)`` (nm): ``(..., 7)`` in ``(-pi, pi]``."""
    from pyro_snf.molecules.openmm_energy import dihedral

    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    quads = torch.as_tensor(list(ALA2_TORSIONS.values()))
    return dihedral(x, quads).numpy()


def _load(name: str, directory: Path | None) -> dict[str, np.ndarray]:
    path = Path(directory or DATA_DIR) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run "
                                f"`python -m pyro_snf.molecules.ala2_data {path.parent}`")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def load_ala2_training(directory: Path | None = None) -> np.ndarray:
    """The shipped training positions, ``(10000, 66)`` float32 in nm (no openmm needed)."""
    return _load(TRAIN_FILE, directory)["positions"]


def load_ala2_reference(directory: Path | None = None) -> dict[str, np.ndarray]:
    """The shipped 10 ns reference: ``{"torsions": (50000, 7), "energy": (50000,)}`` (module doc)."""
    return _load(REFERENCE_FILE, directory)


def _run(kind: str) -> np.ndarray:
    from pyro_snf.molecules.md import alanine_dipeptide, simulate

    system, _, x0 = alanine_dipeptide()
    s = SETTINGS[kind]
    burn = COMMON["equilibration_steps"] // s["report_interval"]
    frames = simulate(system, x0, temperature=COMMON["temperature"],
                      steps=s["steps"] + COMMON["equilibration_steps"],
                      report_interval=s["report_interval"], seed=s["seed"], timestep_fs=COMMON["timestep_fs"],
                      friction_per_ps=COMMON["friction_per_ps"], platform=COMMON["platform"])
    return frames[burn:]


def generate(directory: Path | str = DATA_DIR) -> None:
    """Run both simulations and write :data:`TRAIN_FILE` and :data:`REFERENCE_FILE` into ``directory``."""
    from pyro_snf.molecules.md import alanine_dipeptide
    from pyro_snf.molecules.openmm_energy import OpenMMEnergy

    torch.set_num_threads(1)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    energy = OpenMMEnergy(alanine_dipeptide()[0], temperature=COMMON["temperature"])
    for kind in ("train", "reference"):
        start = time.perf_counter()
        frames = _run(kind)
        seconds = time.perf_counter() - start
        if kind == "train":
            np.savez_compressed(directory / TRAIN_FILE, positions=frames.astype(np.float32))
        else:
            with torch.no_grad():
                u = torch.cat([energy(torch.as_tensor(c)) for c in np.array_split(frames, 50)]).numpy()
            np.savez_compressed(directory / REFERENCE_FILE, torsions=ala2_torsions(frames).astype(np.float32),
                                energy=u.astype(np.float32))
        phi = ala2_torsions(frames)[:, ALA2_TORSION_NAMES.index("phi")]
        print(f"{kind}: {len(frames)} frames, {seconds:.0f} s of MD, phi > 0 in {np.mean(phi > 0):.4f}",
              flush=True)


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR)
