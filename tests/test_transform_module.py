"""Stochastic blocks used as Pyro ``TransformModule`` objects, and the cache traps of doing so.

torch's transforms assume determinism: ``TransformedDistribution.log_prob(x)`` inverts the layers
from ``x`` and ``ComposeTransform.log_abs_det_jacobian`` re-runs the parts from ``z``. A stochastic
block cannot be re-run (a second call draws a different path) nor inverted, so it keeps one record
``(x, y, dS)`` of its last call keyed by object identity: the very input returns the recorded
output, ``inv`` of the very output returns the recorded input, and ``log_abs_det_jacobian`` of that
pair is the recorded path term. The traps checked here: an uncached bijection before a block hands
it a recomputed copy of its input (it must refuse, not silently draw again); one after it hands
``inv`` a copy of its output (no inverse); tensors it did not produce, or an older sample, cannot be
scored. With cached bijections the path density of the last sample is exact.

The block types come from the registry in ``conftest.py`` (fixture ``block_case``), with fewer
steps per block than its defaults.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from torch.distributions import ComposeTransform
from torch.distributions.transforms import AffineTransform

from pyro_snf import MetropolisBlock

D = 2
MEAN = torch.tensor([1.0, -0.5])
STD = torch.tensor([0.6, 1.3])


def u(x):
    return 0.5 * ((x - MEAN.to(x)) / STD.to(x)).pow(2).sum(-1)


def u0(x):
    return 0.5 * (x / 1.5).pow(2).sum(-1)


NUM_STEPS = {"hmc": 2}  # default 3


def make_block(case, **kwargs):
    return case.make(num_steps=NUM_STEPS.get(case.name, 3), **kwargs)


def base():
    return dist.Normal(torch.zeros(D), 1.5).to_event(1)


def expected_log_prob(c1, block, c2, b, z, x):
    """``log q0(z) - sum of path terms``, each recomputed from the recorded intermediates."""
    y1, y2 = c1._cached_x_y[1], c2._cached_x_y[0]  # torch's transform caches hold the intermediates
    assert c1._cached_x_y[0] is z and c2._cached_x_y[1] is x
    assert block.inv(y2) is y1
    ladj1 = c1.log_abs_det_jacobian(z.clone(), y1.clone())  # recomputed, no cache
    ladj2 = c2.log_abs_det_jacobian(y2.clone(), x.clone())
    dS = block.log_abs_det_jacobian(y1, y2)
    return b.log_prob(z) - ladj1 - dS - ladj2, y1, y2, dS


def test_block_inside_transformed_distribution(block_case):
    c1, c2 = T.affine_coupling(D, hidden_dims=[8]), T.affine_coupling(D, hidden_dims=[8])
    block = make_block(block_case, potential=u)
    b = base()
    td = dist.TransformedDistribution(b, [c1, block, c2])
    pyro.set_rng_seed(4)
    x = td.rsample((300,))
    pyro.set_rng_seed(4)
    z = b.rsample((300,))
    assert torch.equal(c1._cached_x_y[0], z)
    expected, y1, y2, dS = expected_log_prob(c1, block, c2, b, c1._cached_x_y[0], x)
    assert torch.allclose(td.log_prob(x), expected, atol=1e-5)
    if block_case.adjusted:  # the recorded path term is the energy difference
        assert torch.allclose(dS, u(y2) - u(y1), atol=1e-5)
    assert not torch.equal(y1, y2)


def test_block_inside_compose_transform_module(block_case):
    """``ComposeTransformModule.log_abs_det_jacobian`` re-runs its parts from ``z``: with cached
    bijections the block answers from its record, so the path density is the recorded one."""
    c1, c2 = T.affine_coupling(D, hidden_dims=[8]), T.affine_coupling(D, hidden_dims=[8])
    block = make_block(block_case, potential=u, base_potential=u0, beta=0.5)
    compose = ComposeTransformModule([c1, block, c2])
    b = base()
    td = dist.TransformedDistribution(b, compose)
    x = td.rsample((300,))
    z = c1._cached_x_y[0]
    expected, y1, y2, dS = expected_log_prob(c1, block, c2, b, z, x)
    assert torch.allclose(td.log_prob(x), expected, atol=1e-5)
    if block_case.adjusted:
        assert torch.allclose(dS, 0.5 * (u(y2) + u0(y2)) - 0.5 * (u(y1) + u0(y1)), atol=1e-5)
    # registered with pyro.module through the compose module: the couplings' parameters are there
    pyro.module("flow", compose)
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("flow$$$0.") for n in names) and any(n.startswith("flow$$$2.") for n in names)


def test_call_cache_semantics(block_case):
    block = make_block(block_case, potential=u)
    x = torch.randn(100, D)
    y = block(x)
    assert block(x) is y  # same input object: the recorded draw
    assert block.inv(y) is x
    ladj = block.log_abs_det_jacobian(x, y)
    assert ladj.shape == (100,) and torch.isfinite(ladj).all()
    if block_case.adjusted:
        assert torch.allclose(ladj, u(y) - u(x), atol=1e-5)
    x_new = x + 0.1
    y_new = block(x_new)  # a fresh tensor: a fresh draw
    assert y_new is not y and not torch.equal(y_new - 0.1, y)
    assert block.inv(y_new) is x_new


def test_recomputed_copy_guard(block_case):
    block = make_block(block_case, potential=u)
    x = torch.randn(100, D)
    block(x)
    with pytest.raises(RuntimeError, match="recomputed copy"):
        block(x.clone())


def test_uncached_bijections_around_block_in_compose_raise():
    """``ComposeTransform.log_abs_det_jacobian`` re-runs the parts before the last one: an uncached
    bijection before the block hands it a recomputed copy of its input, and the block refuses to
    re-run (it would draw a different path); an uncached bijection after the block hands its
    inverse a copy of its output, which it cannot invert."""
    block = MetropolisBlock(0.5, 3, potential=u)
    perm = T.Permute(torch.tensor([1, 0]))  # cached
    td = dist.TransformedDistribution(base(), ComposeTransform([AffineTransform(0.0, 2.0), block, perm]))
    x = td.rsample((50,))
    with pytest.raises(RuntimeError, match="recomputed copy"):
        td.log_prob(x)
    td = dist.TransformedDistribution(base(), ComposeTransform([perm, block, AffineTransform(0.0, 2.0)]))
    x = td.rsample((50,))
    with pytest.raises(NotImplementedError, match="no inverse"):
        td.log_prob(x)
    # with cached bijections on both sides the same composition scores its sample
    cached = [AffineTransform(0.0, 2.0).with_cache(1), block, AffineTransform(0.0, 2.0).with_cache(1)]
    td = dist.TransformedDistribution(base(), ComposeTransform(cached))
    x = td.rsample((50,))
    assert torch.isfinite(td.log_prob(x)).all()


def test_inverse_and_log_det_of_foreign_tensors_raise(block_case):
    block = make_block(block_case, potential=u)
    x = torch.randn(10, D)
    y = block(x)
    with pytest.raises(NotImplementedError, match="no inverse"):
        block.inv(torch.randn(10, D))
    with pytest.raises(NotImplementedError, match="no inverse"):
        block.inv(y.clone())
    with pytest.raises(NotImplementedError, match="path term of a pair it produced"):
        block.log_abs_det_jacobian(x, y.clone())
    with pytest.raises(NotImplementedError, match="path term of a pair it produced"):
        block.log_abs_det_jacobian(x.clone(), y)
    fresh = make_block(block_case, potential=u)
    with pytest.raises(NotImplementedError):
        fresh.inv(y)
    with pytest.raises(NotImplementedError):
        fresh.log_abs_det_jacobian(x, y)


def test_transformed_distribution_scores_only_its_last_sample():
    block = MetropolisBlock(0.5, 3, potential=u)
    td = dist.TransformedDistribution(base(), [block])
    x1 = td.rsample((10,))
    td.rsample((10,))
    with pytest.raises(NotImplementedError):
        td.log_prob(x1)


def test_block_without_potential_as_transform_raises(block_case):
    block = make_block(block_case)
    with pytest.raises(ValueError, match="potential="):
        block(torch.randn(5, D))
    annealed = make_block(block_case, potential=u, beta=0.5)  # beta < 1 but no base_potential
    with pytest.raises(ValueError, match="base_potential"):
        annealed(torch.randn(5, D))


def test_block_is_a_non_bijective_transform_module(block_case):
    block = make_block(block_case, potential=u)
    assert isinstance(block, TransformModule) and isinstance(block, torch.nn.Module)
    assert block.bijective is False
    assert block.domain.event_dim == 1 and block.codomain.event_dim == 1
    assert "step_size" in repr(block)


@pytest.mark.parametrize("learn", [False, True])
def test_blocks_register_with_pyro_module(block_case, learn):
    block = make_block(block_case, potential=u, base_potential=u0, beta=0.5, learn_step_size=learn,
                       learn_beta=learn)
    pyro.module("blk", block)
    names = set(pyro.get_param_store().keys())
    if learn:
        assert names == {"blk$$$log_step_size", "blk$$$beta_logit"}
        assert pyro.param("blk$$$log_step_size") is block.log_step_size
    else:
        assert names == set()
        assert "log_step_size" in dict(block.named_buffers())
