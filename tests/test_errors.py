"""Bad input fails early with a message that says what was expected."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from torch.distributions import Transform, constraints

from pyro_snf import (
    AnnealedEnergy,
    HMCBlock,
    MALABlock,
    MetropolisBlock,
    StochasticNormalizingFlow,
    UnderdampedLangevinBlock,
)
from pyro_snf.architectures import make_snf, paper_double_well_snf, snf_layers
from pyro_snf.blocks import block_factory, resolve_block
from pyro_snf.targets import DoubleWell, NealFunnel
from pyro_snf.transforms import real_nvp_stage, spline_coupling_stage

# the block classes come from the registry in conftest.py (fixture block_case; its .cls)


def u(x):
    return 0.5 * x.pow(2).sum(-1)


def base(dim=2):
    return dist.Normal(torch.zeros(dim), 1.0).to_event(1)


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step_size", [0.0, -0.1, math.nan])
def test_bad_step_size(block_case, step_size):
    with pytest.raises(ValueError, match="step_size must be > 0"):
        block_case.cls(step_size=step_size)


@pytest.mark.parametrize("num_steps", [0, -3, 1.5])
def test_bad_num_steps(block_case, num_steps):
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        block_case.cls(num_steps=num_steps)


@pytest.mark.parametrize("beta", [-0.1, 1.1, math.nan])
def test_bad_beta(block_case, beta):
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        block_case.cls(beta=beta)


@pytest.mark.parametrize("num_leapfrog_steps", [0, -1, 2.5])
def test_bad_num_leapfrog_steps(num_leapfrog_steps):
    with pytest.raises(ValueError, match="num_leapfrog_steps must be an integer >= 1"):
        HMCBlock(num_leapfrog_steps=num_leapfrog_steps)


@pytest.mark.parametrize("friction", [0.0, -1.0, math.nan])
def test_bad_friction(friction):
    with pytest.raises(ValueError, match="friction must be > 0"):
        UnderdampedLangevinBlock(friction=friction)


def test_valid_edge_values_are_accepted(block_case):
    for beta in (0.0, 1.0):
        block = block_case.cls(step_size=1e-6, num_steps=1, beta=beta)
        assert block.num_steps == 1


def test_bad_base_distribution():
    with pytest.raises(ValueError, match=r"event shape \(D,\)"):
        StochasticNormalizingFlow(dist.Normal(torch.zeros(2), 1.0), [T.Permute(torch.tensor([1, 0]))])
    with pytest.raises(ValueError, match=r"event shape \(D,\)"):
        StochasticNormalizingFlow(dist.Normal(torch.zeros(2, 2), 1.0).to_event(2), [])
    with pytest.raises(ValueError, match="rsample"):
        StochasticNormalizingFlow(dist.OneHotCategorical(torch.ones(3) / 3), [])


def test_blocks_need_a_potential():
    with pytest.raises(ValueError, match="potential="):
        StochasticNormalizingFlow(base(), [MetropolisBlock()])


def test_bad_layers():
    with pytest.raises(TypeError, match="torch Transforms"):
        StochasticNormalizingFlow(base(), [torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="event_dim"):
        StochasticNormalizingFlow(base(), [_MatrixTransform()])


class _MatrixTransform(Transform):
    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.independent(constraints.real, 2)
    bijective = True

    def _call(self, x):
        return x


class _DropLast(Transform):
    """A (non-bijective) layer that changes the event shape."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def _call(self, x):
        return x[..., :-1]

    def _inverse(self, y):
        return torch.cat([y, y[..., -1:]], -1)

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros(x.shape[:-1])


def test_layer_changing_event_shape():
    snf = StochasticNormalizingFlow(base(3), [_DropLast()])
    with pytest.raises(ValueError, match=r"changed the shape from \(5, 3\) to \(5, 2\)"):
        snf.rsample((5,))
    with pytest.raises(ValueError, match=r"changed the shape from \(5, 3\) to \(5, 4\)"):
        snf.backward_path(torch.randn(5, 3))


# -- energies -------------------------------------------------------------------------------------


def forgot_to_sum(x):
    return 0.5 * x.pow(2)


def test_potential_with_wrong_shape(block_case):
    cls = block_case.cls
    block = cls()
    message = r"returned shape \(10, 2\) for input of shape \(10, 2\); expected \(10,\)"
    with pytest.raises(ValueError, match=message):
        block.forward_step(torch.randn(10, 2), forgot_to_sum)
    annealed = cls(beta=0.5)
    with pytest.raises(ValueError, match=r"base_potential returned shape \(10, 2\)"):
        annealed.forward_step(torch.randn(10, 2), u, forgot_to_sum)


def test_potential_with_wrong_shape_in_flow():
    snf = StochasticNormalizingFlow(base(), [T.affine_coupling(2)], forgot_to_sum)
    x = snf.sample((10,))
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        snf.log_weight(x)
    snf = StochasticNormalizingFlow(base(), [MetropolisBlock()], lambda x: x.pow(2).sum())
    with pytest.raises(ValueError, match=r"returned shape \(\) for input of shape \(10, 2\)"):
        snf.sample((10,))


def test_potential_returning_non_tensor():
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        MetropolisBlock().forward_step(torch.randn(4, 2), lambda x: 1.0)


def test_annealed_block_needs_base_potential(block_case):
    cls = block_case.cls
    with pytest.raises(ValueError, match="base_potential"):
        cls(beta=0.5).forward_step(torch.randn(4, 2), u)
    with pytest.raises(ValueError, match="base_potential"):
        cls(beta=1.0, learn_beta=True).forward_step(torch.randn(4, 2), u)
    with pytest.raises(ValueError, match="base_potential"):
        AnnealedEnergy(u, None, beta=0.0)


def test_scalar_input(block_case):
    with pytest.raises(ValueError, match=r"\(\.\.\., D\)"):
        block_case.cls().forward_step(torch.tensor(1.0), u)
    with pytest.raises(ValueError, match=r"\(\.\.\., D\)"):
        block_case.cls().step(torch.tensor(1.0), u)


def test_target_with_wrong_dimension():
    with pytest.raises(ValueError, match="has dimension 2"):
        DoubleWell()(torch.randn(4, 3))
    with pytest.raises(ValueError, match="dim >= 2"):
        NealFunnel(1)


def test_flow_without_potential():
    snf = StochasticNormalizingFlow(base(), [T.affine_coupling(2)])
    with pytest.raises(ValueError, match="potential="):
        snf.log_weight(snf.sample((3,)))
    with pytest.raises(ValueError, match="potential="):
        snf.sample_and_log_weight((3,))


def test_importance_weights_needs_unbatched_flow():
    snf = StochasticNormalizingFlow(base(), [MetropolisBlock()], u).expand((3,))
    with pytest.raises(ValueError, match="unbatched"):
        snf.importance_weights(10)


# -- builders -------------------------------------------------------------------------------------


def test_block_registry_errors():
    for bad in ("gibbs", MALABlock(), torch.nn.Linear, 3):
        with pytest.raises(ValueError, match=r"unknown block .*block must be one of \['hmc', 'langevin'"):
            resolve_block(bad)
    with pytest.raises(ValueError, match="unknown block 'gibbs'"):
        block_factory("gibbs", step_size=0.1)
    with pytest.raises(ValueError, match="unknown block 3"):
        block_factory(3)
    with pytest.raises(ValueError, match=r"takes no block keyword arguments; got \['step_size'\]"):
        block_factory(lambda beta: MALABlock(beta=beta), step_size=0.1)
    with pytest.raises(TypeError, match="friction"):  # a wrong keyword fails when a block is built
        block_factory("mala", friction=1.0)(0.5)


def test_builder_errors():
    with pytest.raises(ValueError, match="unknown block"):
        snf_layers(2, block="gibbs")
    with pytest.raises(ValueError, match="unknown flow"):
        snf_layers(2, flow="maf")
    with pytest.raises(ValueError, match="one beta per flow stage"):
        snf_layers(2, num_stages=3, betas=[0.0, 1.0])
    with pytest.raises(ValueError, match="flow_scale must be a positive"):
        snf_layers(2, flow_scale=0.0)
    with pytest.raises(ValueError, match="variant"):
        paper_double_well_snf(DoubleWell(), variant="big")
    with pytest.raises(ValueError, match="input_dim="):
        make_snf(u)
    with pytest.raises(ValueError, match="input_dim >= 2"):
        real_nvp_stage(1)
    with pytest.raises(ValueError, match="num_couplings"):
        spline_coupling_stage(2, num_couplings=0)
