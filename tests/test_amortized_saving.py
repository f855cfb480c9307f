"""AmortizedSNF saving (issue 12): Pyro's param store, torch.save and state_dict give the same numbers;
loads from a differently configured guide are errors that name the difference; global latents are
refused with an error that names what works, and that alternative (a parameter) gives exact weights."""

from __future__ import annotations

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_snf.examples.vae import VAE, Encoder
from pyro_snf.infer import AmortizedSNF

PIX, LAT, HID = 12, 3, 8
X = torch.bernoulli(torch.rand(6, PIX, generator=torch.Generator().manual_seed(0)))


def _guide(vae: VAE, latent: int = LAT, **kwargs) -> AmortizedSNF:
    options = {"num_blocks": 2, "num_flows": 1, "latent_dim": latent, **kwargs}
    if not options["num_flows"]:
        options["latent_dim"] = None
    torch.manual_seed(1)
    return AmortizedSNF(vae.model, Encoder(PIX, latent, HID), **options)


def _trained() -> tuple[VAE, AmortizedSNF, tuple[torch.Tensor, torch.Tensor]]:
    vae = VAE(PIX, LAT, HID)
    guide = _guide(vae)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with guide.adapting():
        for _ in range(3):
            svi.step(X)
    pyro.set_rng_seed(7)
    return vae, guide, guide.log_likelihood(X, num_samples=40)


def _drop_decoder() -> None:
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith("decoder")]:
        del store[name]


def _same(got: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_param_store_torch_save_and_state_dict_give_the_same_numbers(tmp_path):
    vae, guide, expected = _trained()
    assert float(guide.state_dict()["blocks.0.log_step_size"]) != math.log(0.2)  # adapted
    pyro.get_param_store().save(tmp_path / "store.pt")
    torch.save(guide, tmp_path / "guide.pt")
    state = guide.state_dict()

    pyro.clear_param_store()  # 1. Pyro's param store: a new model and guide, parameters from the file
    pyro.get_param_store().load(tmp_path / "store.pt")
    vae2 = VAE(PIX, LAT, HID)
    fresh = _guide(vae2)
    pyro.set_rng_seed(7)
    assert _same(fresh.log_likelihood(X, num_samples=40), expected)

    pyro.clear_param_store()  # 2. torch.save: the guide and its model (a method of a picklable module)
    loaded = torch.load(tmp_path / "guide.pt", weights_only=False)
    pyro.set_rng_seed(7)
    assert _same(loaded.log_likelihood(X, num_samples=40), expected)

    pyro.clear_param_store()  # 3. state_dict into a new guide of the same model
    other = _guide(vae)
    other.load_state_dict(state)
    pyro.set_rng_seed(7)
    assert _same(other.log_likelihood(X, num_samples=40), expected)
    assert torch.equal(pyro.get_param_store()["amortized_snf$$$flows.layers.0.nn.layers.1.weight"],
                       state["flows.layers.0.nn.layers.1.weight"])


def test_torch_save_of_a_guide_whose_model_does_not_pickle_asks_for_set_model(tmp_path):
    vae = VAE(PIX, LAT, HID)

    def model(x):  # a local function: it does not pickle
        vae.model(x)

    guide = _guide(vae)
    guide.set_model(model)
    pyro.set_rng_seed(3)
    expected = guide.log_likelihood(X, num_samples=20)
    torch.save(guide, tmp_path / "guide.pt")
    loaded = torch.load(tmp_path / "guide.pt", weights_only=False)
    with pytest.raises(RuntimeError, match=r"unpickled without its model.*guide.set_model\(model\)"):
        loaded(X)
    loaded.set_model(model)
    pyro.set_rng_seed(3)
    assert _same(loaded.log_likelihood(X, num_samples=20), expected)


@pytest.mark.parametrize("change, field", [
    ({"num_blocks": 1}, "num_blocks 2 (saved) vs 1"),
    ({"block": "hmc"}, "blocks MALABlock,MALABlock (saved) vs HMCBlock,HMCBlock"),
    ({"num_flows": 2}, "num_flows 1 (saved) vs 2"),
    ({"num_flows": 0}, "num_flows 1 (saved) vs 0"),
    ({"flow": "iaf"}, "flow coupling (saved) vs iaf"),
    ({"latent": 4}, "latent_dim 3 (saved) vs 4"),
])
def test_loads_from_a_differently_configured_guide_are_errors_naming_the_difference(change, field):
    vae, guide, _ = _trained()
    state = guide.state_dict()
    latent = change.pop("latent", LAT)
    vae2 = VAE(PIX, latent, HID)
    other = _guide(vae2, latent, **change)
    with pytest.raises(ValueError, match=r"load_state_dict: .*configured guide: .*" + re.escape(field)):
        other.load_state_dict(state)
    _drop_decoder()  # the model's own parameters (another latent size: another decoder shape)
    with pytest.raises(ValueError, match=r"param store holds parameters under 'amortized_snf' written by a "
                       r"differently configured guide: .*" + re.escape(field)):
        other(X)  # the store holds the trained guide's parameters: never silently reset
    pyro.clear_param_store()
    assert other(X)["z"].shape == (6, latent)


def test_other_latent_size_without_flows_is_an_error_too():
    vae = VAE(PIX, LAT, HID)
    guide = _guide(vae, num_flows=0)
    guide(X)
    other = _guide(VAE(PIX, 4, HID), 4, num_flows=0)
    _drop_decoder()
    with pytest.raises(ValueError, match=r"other shapes: encoder.head.bias \(6,\) \(saved\) vs \(8,\)"):
        other(X)
    pyro.clear_param_store()
    with pytest.raises(RuntimeError, match="size mismatch for encoder.head.weight"):
        other.load_state_dict(guide.state_dict())


def test_global_latent_is_refused_naming_what_works_and_that_alternative_is_exact():
    """A global mean mu: as a latent it is refused; as a parameter (the error's advice) SVI fits it with
    the encoder, and the weights are exact for p(x_i | mu) = N(x_i; mu 1, I + s^2 I)."""
    x = torch.tensor([[1.5, 2.0], [2.5, 1.0], [3.0, 2.5], [1.0, 1.5]])

    def encoder(x):
        return x / 2, torch.full_like(x, 0.8)

    def sampled(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    with pytest.raises(NotImplementedError, match=r"'mu' is outside plate 'data': a global latent.*What "
                       r"works: make 'mu' a parameter \(pyro.param.*What does not: hiding it with poutine"):
        AmortizedSNF(sampled, encoder)(x)

    def as_parameter(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    guide = AmortizedSNF(as_parameter, encoder, block_kwargs={"step_size": 0.3})
    svi = SVI(as_parameter, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with guide.adapting():
        for _ in range(60):
            svi.step(x)
    mu = pyro.param("mu").detach()
    assert 1.0 < float(mu) < 2.6  # from 0 toward the mean of x, 1.875
    ll, se = guide.log_likelihood(x, num_samples=2000)
    exact = dist.Normal(mu, math.sqrt(1.25)).log_prob(x).sum(-1)
    assert bool((((ll - exact) / se).abs() < 4).all()), (ll, exact, se)
