"""The paper's alanine-dipeptide Boltzmann generator (Wu, Köhler & Noé 2020, experiment 3) in pyro_snf.

**Target.** Internal coordinates ``z`` (60 dims, :func:`~pyro_snf.molecules.alanine_dipeptide_transform`
fitted on the training frames) with the energy :class:`~pyro_snf.molecules.InternalEnergy` of ``linlogcut(u,
500, 10^4)`` (kT at 1000 K, the paper's cut) and ``rigid_body=True``: aligned MD frames follow
:math:`e^{-u_z + \\log g}` (the Boltzmann density with the 6 rigid-body coordinates integrated out), so
importance weights against this target reweight to the same marginals as MD. The torsion coordinates of
``z`` are periodic; the target is restricted to the box :math:`[-\\pi, \\pi]` of every torsion coordinate
(:class:`TorsionBox`, energy ``+inf`` outside), where the inverse transform puts every configuration exactly
once (the two ends are one configuration, a set of measure zero), so the target is normalisable and its
marginal in positions is exactly the (cut) Boltzmann density; a sample outside the box gets weight 0, a
proposal there is rejected.

**Models** (:func:`paper_ala2_model`): ``"rnvp"``, RealNVP of ``num_stages`` stages of 2 affine couplings
(MLP ``hidden_dims``, ReLU, Pyro's ``AffineCoupling``) on a standard normal base; ``"snf_mc"`` /
``"snf_mala"``, the same with a stochastic block after each stage annealed at :math:`\\lambda_i = i / (K - 1)`
between the base's energy and the target (the released code's layout: random-walk Metropolis, 20 steps
of 0.1; or MALA). The ``*_circular`` variants (``"circular"``, ``"snf_mc_circular"``,
``"snf_mala_circular"``) replace the affine couplings by
:class:`~pyro_snf.transforms.circular.CircularCoupling` (circular splines with rotations on the torsion
coordinates, affine on the others, conditioners reading torsions as :math:`(\\cos, \\sin)`) on the base
:class:`~pyro_snf.transforms.torus_base.TorusNormal` (uniform torsions): every draw lies in the torsion box,
where the RealNVP put a quarter of its draws outside (weight 0). This is not in the paper.
``"snf_mc_pulled_circular"`` keeps the circular flow's stages and puts a Metropolis block before each
stage ``k`` whose energy is the target pulled back through stages ``k..K`` (Jacobian included,
:class:`~pyro_snf.blocks.PulledBackBlock`): every block samples the target itself, seen in its own
coordinates, where the flow has flattened the barriers it learned (MCMC in the flow's latent space, as
NeuTra, Hoffman et al. 2019). The annealed blocks instead evaluate :math:`(1 - \\lambda_i) u_0 +
\\lambda_i u` at stage ``i``'s output, which the later stages still transform: with a uniform base on the
torsions, the early ones diffuse the angles, and the later stages, trained without them, do not undo it.

Example (a tiny model on 200 frames of MD)::

    >>> import pytest; _ = pytest.importorskip("openmmtools")
    >>> import torch
    >>> from pyro_snf.molecules import alanine_dipeptide, simulate
    >>> system, _, x0 = alanine_dipeptide()
    >>> frames = simulate(system, x0, steps=2000, report_interval=10, seed=3)
    >>> target, z = ala2_target(system, frames)
    >>> snf = paper_ala2_model(target, "snf_mc", hidden_dims=(8,), num_stages=2, num_steps=2)
    >>> [round(float(b.beta), 2) for b in snf.blocks]
    [0.0, 1.0]
    >>> out = sample_with_weights(snf, 16, chunk=8)
    >>> out["x"].shape, out["log_weights"].shape
    ((16, 66), (16,))
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from pyro_snf.architectures import make_snf
from pyro_snf.blocks import MALABlock, MetropolisBlock, PulledBackBlock, StochasticBlock
from pyro_snf.diagnostics.arviz_compat import KHAT_THRESHOLD
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.molecules.ala2_data import ALA2_TORSION_NAMES, ala2_torsions
from pyro_snf.molecules.internal import MixedTransform, alanine_dipeptide_transform
from pyro_snf.molecules.internal_energy import InternalEnergy
from pyro_snf.molecules.metrics import (
    free_energy_2d,
    surface_rmse,
    torsion_kl,
    weight_summary,
    weighted_fraction,
)
from pyro_snf.molecules.openmm_energy import OpenMMEnergy
from pyro_snf.targets.base import Target
from pyro_snf.transforms.circular import circular_stage
from pyro_snf.transforms.torus_base import TorusNormal

PAPER_CUT = (500.0, 1e4)
VARIANTS = ("rnvp", "snf_mc", "snf_mala", "circular", "snf_mc_circular", "snf_mala_circular",
            "snf_mc_pulled_circular")


class TorsionBox(nn.Module, Target):
    """``energy(z)`` where every torsion coordinate of ``z`` lies in ``[-pi, pi]``, ``+inf`` elsewhere (the
    two ends are one configuration; counting it twice changes no integral)."""

    log_Z = None

    def __init__(self, energy: InternalEnergy) -> None:
        super().__init__()
        self.inner = energy
        self.transform: MixedTransform = energy.transform
        self.dim = energy.dim

    def inside(self, z: Tensor) -> Tensor:
        t = z[..., self.transform.torsion_slice]
        return (t.abs() <= math.pi).all(-1)

    def forward(self, z: Tensor) -> Tensor:
        u = self.inner(z)
        return torch.where(self.inside(z), u, torch.full_like(u, float("inf")))

    def energy(self, z: Tensor) -> Tensor:
        return self(z)


def ala2_target(system, frames, temperature: float = 1000.0, cut: tuple[float, float] | None = PAPER_CUT,
                dtype: torch.dtype = torch.float32) -> tuple[TorsionBox, Tensor]:
    """The boxed internal-coordinate target (module doc) and the frames' internal coordinates ``z``."""
    transform = alanine_dipeptide_transform(np.asarray(frames, dtype=np.float64), dtype=dtype)
    energy = OpenMMEnergy(system, temperature=temperature, cut=cut, dtype=dtype)
    target = TorsionBox(InternalEnergy(energy, transform, rigid_body=True))
    z = transform.inv(torch.as_tensor(np.asarray(frames), dtype=dtype))
    return target, z


def paper_ala2_model(target: TorsionBox, variant: str = "snf_mc", *, num_stages: int = 5,
                     hidden_dims=(128, 128, 128), num_steps: int = 20,
                     step_size: float | None = None, count_bins: int = 8,
                     periodic: Tensor | None = None) -> StochasticNormalizingFlow:
    """RNVP, circular flow or SNF of the experiment (module doc); ``step_size`` defaults to 0.1
    (Metropolis) and 0.01 (MALA); blocks keep a fixed step (no adaptation, as the paper). Circular
    variants: ``count_bins`` spline bins per angle; ``periodic`` (boolean, shape ``(dim,)``) the
    coordinates treated as angles, default every torsion (:func:`wide_torsions` picks those that reach
    the seam; the others get affine couplings and a normal base, as in the RNVP)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    betas = [i / (num_stages - 1) for i in range(num_stages)] if num_stages > 1 else [1.0]
    circular = variant.endswith("circular")
    kind = variant.removesuffix("_circular") if circular else variant
    pulled = kind.endswith("_pulled")
    kind = kind.removesuffix("_pulled")
    options: dict = {"num_stages": num_stages, "hidden_dims": hidden_dims}
    if circular:
        if periodic is None:
            periodic = torch.zeros(target.dim, dtype=torch.bool)
            periodic[target.transform.torsion_slice] = True
        periodic = torch.as_tensor(periodic, dtype=torch.bool).cpu()
        torsion = torch.zeros(target.dim, dtype=torch.bool)
        torsion[target.transform.torsion_slice] = True
        if periodic.shape != (target.dim,) or (periodic & ~torsion).any():
            raise ValueError(f"periodic must be a boolean mask of shape ({target.dim},) selecting torsion "
                             f"coordinates only (slice {target.transform.torsion_slice})")
        stages = iter(range(num_stages))
        options["flow"] = lambda dim: circular_stage(periodic, 2, hidden_dims, count_bins, stage=next(stages))
        options["base_dist"] = TorusNormal(periodic, dtype=target.transform.ref.dtype)
    if kind in ("rnvp", "circular"):
        return make_snf(target, target.dim, block=None, **options)
    cls, default_step = (MetropolisBlock, 0.1) if kind == "snf_mc" else (MALABlock, 0.01)
    step = default_step if step_size is None else step_size

    def block(beta: float):
        return cls(step_size=step, num_steps=num_steps, beta=beta, adapt_step_size=False)

    if pulled:  # before stage k: the target pulled back through stages k..K, Jacobian included
        flow = make_snf(target, target.dim, block=None, **options)
        size = len(flow.layers) // num_stages  # the layers of one stage (its couplings)
        stages = [list(flow.layers[i:i + size]) for i in range(0, len(flow.layers), size)]
        layers: list = []
        for k, stage in enumerate(stages):
            later = [t for s in stages[k:] for t in s]
            layers += [PulledBackBlock(block(1.0), later, jacobian=True), *stage]
        return StochasticNormalizingFlow(flow.base_dist, layers, target)
    return make_snf(target, target.dim, block=block, betas=betas, blocks_after_flows=True, prior_block=False,
                    **options)


def wide_torsions(target: TorsionBox, z: Tensor, threshold: float = 2.0) -> Tensor:
    """Boolean mask of the torsion coordinates whose values in ``z`` (e.g. the MD frames) reach
    ``|z| > threshold`` rad (near the seam at ``pi`` of the box): the ones a flow on ``R`` would carry out
    of the box. On the shipped 1000 K training set: 9 of 17 (the three methyl rotors, the rows that place
    CA's C and the C-terminal N, i.e. the backbone phi and psi, and the four rows across the two amide
    bonds, ACE:O and ACE:CH3, NME:H and NME:C, which the MD takes to cis); the other 8 stay within 1.7 rad
    of their mean."""
    mask = torch.zeros(target.dim, dtype=torch.bool)
    sl = target.transform.torsion_slice
    mask[sl] = (z[..., sl].abs() > threshold).reshape(-1, sl.stop - sl.start).any(0).cpu()
    return mask


def sample_with_weights(model: StochasticNormalizingFlow, num_samples: int,
                        chunk: int = 2000) -> dict[str, np.ndarray]:
    """``num_samples`` draws in chunks: ``z`` (internal), ``x`` (positions, nm), ``log_weights`` (against
    the boxed target; ``-inf`` outside the box or for a non-finite energy) and ``energy`` ``u_z``."""
    target: TorsionBox = model.potential
    zs, lws, us = [], [], []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            z = model.rsample(torch.Size((min(chunk, num_samples - start),)))
            lw = model.log_weight(z, warn=False)
            zs.append(z)
            lws.append(lw)
            us.append(target(z))
    z = torch.cat(zs)
    with torch.no_grad():
        x = target.transform(z)
    lw = torch.cat(lws).double()
    lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -float("inf")))
    return {"z": z.double().numpy(), "x": x.double().numpy(), "log_weights": lw.numpy(),
            "energy": torch.cat(us).double().numpy()}


def copy_flow_parameters(source: StochasticNormalizingFlow, dest: StochasticNormalizingFlow) -> None:
    """Copy the bijections' parameters of ``source`` into ``dest`` (same stages, blocks ignored): a
    stochastic flow warm-started from a trained flow."""
    src = [t for t in source.layers if isinstance(t, nn.Module) and not isinstance(t, StochasticBlock)]
    dst = [t for t in dest.layers if isinstance(t, nn.Module) and not isinstance(t, StochasticBlock)]
    if len(src) != len(dst) or any(type(a) is not type(b) for a, b in zip(src, dst)):
        raise ValueError("source and dest must have the same bijections in the same order")
    for a, b in zip(src, dst):
        b.load_state_dict(a.state_dict())



def evaluate_ala2(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                  training_torsions: np.ndarray | None = None, bins: int = 20,
                  min_population: float = 0.01) -> dict:
    """Every metric of the experiment for ``samples`` (from :func:`sample_with_weights`) against the MD
    ``reference`` (:func:`~pyro_snf.molecules.ala2_data.load_ala2_reference`): per torsion the paper's and
    the normalised KL (unweighted, as the paper, and reweighted), the ``(phi, psi)`` free-energy RMSE on
    ``bins x bins`` bins with reference population ``>= min_population`` (unweighted and reweighted), the
    ``phi > 0`` population, Kish ESS, ``log Z`` and the fraction of zero weights (outside the torsion
    box, or a non-finite energy). With ``training_torsions`` (``ala2_torsions`` of the training frames)
    it adds ``kl_vs_training``, the unweighted KL against the training set: the paper's notebook's
    comparison. ``reweighting_reliable`` is ``False``, with a ``RuntimeWarning``, where the weights' PSIS
    k-hat exceeds 0.7: their variance is then effectively infinite, and every reweighted number (SEs
    included) can be far off however plausible it looks."""
    tor = ala2_torsions(samples["x"])
    lw = samples["log_weights"]
    ref = reference["torsions"].astype(np.float64)
    col = {name: i for i, name in enumerate(ALA2_TORSION_NAMES)}
    out: dict = {"kl": {}, "kl_reweighted": {}}
    for name, i in col.items():
        out["kl"][name] = torsion_kl(ref[:, i], tor[:, i])
        out["kl_reweighted"][name] = torsion_kl(ref[:, i], tor[:, i], log_weights=lw)
        if training_torsions is not None:
            out.setdefault("kl_vs_training", {})[name] = torsion_kl(training_torsions[:, i], tor[:, i])
    f_ref = free_energy_2d(ref[:, col["phi"]], ref[:, col["psi"]], bins=bins)
    for key, weights in (("fes", None), ("fes_reweighted", lw)):
        f = free_energy_2d(tor[:, col["phi"]], tor[:, col["psi"]], weights, bins=bins)
        out[key] = surface_rmse(f, f_ref, min_population)
    for key, weights in (("phi_positive", None), ("phi_positive_reweighted", lw)):
        p, se = weighted_fraction(tor[:, col["phi"]] > 0, weights)
        out[key] = {"value": p, "se": se}
    out["weights"] = weight_summary(lw)
    out["reweighting_reliable"] = bool(out["weights"]["khat"] <= KHAT_THRESHOLD)
    if not out["reweighting_reliable"]:
        warnings.warn(f"evaluate_ala2: PSIS k-hat {out['weights']['khat']:.2f} > {KHAT_THRESHOLD}: the "
                      "reweighted metrics (kl_reweighted, fes_reweighted, phi_positive_reweighted, log Z) "
                      "are unreliable", RuntimeWarning, stacklevel=2)
    out["fraction_zero_weight"] = float(np.mean(np.isneginf(lw)))
    out["num_samples"] = int(len(lw))
    return out


__all__ = ["PAPER_CUT", "TorsionBox", "VARIANTS", "ala2_target", "copy_flow_parameters", "evaluate_ala2",
           "paper_ala2_model", "sample_with_weights", "wide_torsions"]
