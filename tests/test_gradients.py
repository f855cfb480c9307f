"""Gradients of the SNF training losses, and saving/loading parameters.

- every parameter (coupling weights, learnable step sizes, learnable beta) gets a finite, nonzero
  gradient from the reverse-KL loss ``mean(u(x) + log_prob(x))`` and from the ML loss
  ``mean(backward_path(x)[1])``, with and without ``detach_forces``;
- at a fixed seed the losses are deterministic functions of the parameters (reparameterised noise,
  accept decisions locally constant), so autograd must agree with central finite differences;
- ``detach_forces=True`` leaves samples and weights unchanged and changes (biases) the gradient.
"""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch

from pyro_snf import MetropolisBlock, StochasticNormalizingFlow

D = 2
MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = torch.tensor([0.6, 1.3], dtype=torch.float64)


def u(x):
    return 0.5 * ((x - MEAN.to(x)) / STD.to(x)).pow(2).sum(-1) + 0.1 * x.pow(4).sum(-1)


# the block types are the registry's (conftest.py), with fewer steps per block here
NUM_STEPS = {"hmc": 2}  # default 3


def make_snf(case, detach_forces: bool = False, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    base = dist.Normal(torch.zeros(D, dtype=dtype), torch.full((D,), 1.5, dtype=dtype)).to_event(1)
    block = case.make(num_steps=NUM_STEPS.get(case.name, 3), beta=0.5, learn_step_size=True, learn_beta=True,
                      detach_forces=detach_forces)
    layers = [T.affine_coupling(D, hidden_dims=[8]), T.Permute(torch.tensor([1, 0])), block,
              T.affine_coupling(D, hidden_dims=[8])]
    for layer in layers:
        if isinstance(layer, torch.nn.Module):
            layer.to(dtype)
    return StochasticNormalizingFlow(base, layers, u)


def target_samples(n: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return (MEAN + STD * torch.randn(n, D, dtype=torch.float64, generator=g)).to(dtype)


def kl_loss(snf, n: int = 256):
    x = snf.rsample((n,))
    return (u(x) + snf.log_prob(x)).mean()


def ml_loss(snf, n: int = 256):
    return snf.backward_path(target_samples(n, snf.base_dist.mean.dtype))[1].mean()


LOSSES = {"kl": kl_loss, "ml": ml_loss}


@pytest.mark.parametrize("detach_forces", [False, True])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_gradient_reaches_every_parameter(block_case, loss, detach_forces):
    snf = make_snf(block_case, detach_forces)
    params = dict(snf.module.named_parameters())
    ids = {id(p) for p in params.values()}
    assert id(snf.blocks[0].log_step_size) in ids and id(snf.blocks[0].beta_logit) in ids
    assert len(params) == 2 + 2 * len(list(snf.layers[0].parameters()))
    value = LOSSES[loss](snf)
    assert torch.isfinite(value)
    value.backward()
    for pname, p in params.items():
        if detach_forces and not block_case.adjusted and pname.endswith("beta_logit"):
            # unadjusted dynamics see beta only through the force: detached forces, no gradient
            assert p.grad is None
            continue
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert float(p.grad.abs().sum()) > 0, f"{pname} has an all-zero gradient"


def _probe_params(snf):
    """(name, tensor, index) of a few scalar parameters to differentiate numerically."""
    block = snf.blocks[0]
    first, last = snf.layers[0], snf.layers[3]
    return [
        ("log_step_size", block.log_step_size, ()),
        ("beta_logit", block.beta_logit, ()),
        ("coupling0.weight", first.nn.layers[0].weight, (0, 0)),
        ("coupling3.bias", last.nn.layers[-1].bias, (1,)),
    ]


def _loss_at_seed(snf, loss, seed):
    pyro.set_rng_seed(seed)
    return LOSSES[loss](snf, 64)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_gradient_matches_finite_differences(block_case, loss):
    snf = make_snf(block_case, dtype=torch.float64)
    value = _loss_at_seed(snf, loss, 17)
    value.backward()
    h = 1e-7  # small enough that no accept decision flips at this seed (float64 roundoff ~1e-9)
    for pname, p, idx in _probe_params(snf):
        analytic = float(p.grad[idx])
        with torch.no_grad():
            original = p[idx].clone()
            p[idx] = original + h
            up = float(_loss_at_seed(snf, loss, 17))
            p[idx] = original - h
            down = float(_loss_at_seed(snf, loss, 17))
            p[idx] = original
        numeric = (up - down) / (2 * h)
        assert abs(analytic - numeric) <= 1e-5 + 1e-4 * abs(numeric), (pname, analytic, numeric)


def test_detach_forces_keeps_weights_and_changes_gradient(block_case):
    """Detached forces: same samples and path densities (weights stay exact) but a different,
    biased reverse-KL gradient for the parameters that act through the forces (random-walk
    Metropolis uses no forces: there the gradient does not change at all)."""
    values, grads = [], []
    for detach in (False, True):
        snf = make_snf(block_case, detach_forces=detach, dtype=torch.float64)
        pyro.set_rng_seed(5)
        x = snf.rsample((64,))
        lp = snf.log_prob(x)
        (u(x) + lp).mean().backward()
        values.append((x.detach(), lp.detach()))
        grads.append(snf.blocks[0].log_step_size.grad)
    assert torch.allclose(values[0][0], values[1][0], rtol=0, atol=1e-12)
    assert torch.allclose(values[0][1], values[1][1], rtol=0, atol=1e-10)
    if block_case.cls is MetropolisBlock:
        assert torch.equal(grads[0], grads[1])
    else:
        assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=0)


def test_state_dict_round_trip(block_case):
    snf = make_snf(block_case, seed=0)
    other = make_snf(block_case, seed=1)
    with torch.no_grad():
        snf.blocks[0].log_step_size.add_(0.3)
        snf.blocks[0].beta_logit.sub_(0.2)

    def draw(flow):
        pyro.set_rng_seed(9)
        return flow.sample_and_log_weight((100,))

    x_ref, lw_ref = draw(snf)
    x_other, _ = draw(other)
    assert not torch.allclose(x_ref, x_other)
    buffer = io.BytesIO()
    torch.save(snf.module.state_dict(), buffer)
    buffer.seek(0)
    other.module.load_state_dict(torch.load(buffer))
    x_new, lw_new = draw(other)
    assert torch.equal(x_new, x_ref) and torch.equal(lw_new, lw_ref)
    assert float(other.blocks[0].beta.detach()) == float(snf.blocks[0].beta.detach())


def test_state_dict_contains_fixed_step_size_buffer():
    block = MetropolisBlock(0.3, 2)
    state = block.state_dict()
    assert set(state) == {"log_step_size"}
    fresh = MetropolisBlock(0.9, 2)
    fresh.load_state_dict(state)
    assert abs(float(fresh.step_size) - 0.3) < 1e-6
