"""Bijective layers and flow builders on top of Pyro's ``TransformModule`` layers (one registry:
:data:`FLOWS`)."""

from pyro_snf.transforms.affine import Affine
from pyro_snf.transforms.coupling import (
    real_nvp,
    real_nvp_block,
    real_nvp_stage,
    reverse_permutation,
    spline_coupling_block,
    spline_coupling_stage,
)
from pyro_snf.transforms.registry import FLOWS, FlowBuilder, make_flow

__all__ = ["FLOWS", "Affine", "FlowBuilder", "make_flow", "real_nvp", "real_nvp_block", "real_nvp_stage",
           "reverse_permutation", "spline_coupling_block", "spline_coupling_stage"]
