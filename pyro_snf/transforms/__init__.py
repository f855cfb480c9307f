"""Flow builders on top of Pyro's bijective ``TransformModule`` layers."""

from pyro_snf.transforms.coupling import real_nvp, real_nvp_block, reverse_permutation, spline_coupling_block

__all__ = ["real_nvp", "real_nvp_block", "reverse_permutation", "spline_coupling_block"]
