"""Small fixes: empty SNF draws, non-finite observed data, what k-hat can and cannot see, and Pyro's
max_plate_nesting guess with an AutoSNF guide. Seeds are fixed by tests/conftest.py."""

import logging
import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_snf import MetropolisBlock, StochasticNormalizingFlow
from pyro_snf.diagnostics.arviz_compat import khat_verdict
from pyro_snf.infer import AutoSNF, importance_sample
from pyro_snf.infer.potential import ModelPotential
from pyro_snf.infer.result import _NOTE

torch.set_num_threads(1)

NAN, INF = float("nan"), float("inf")


# -- 1. a draw of no samples ---------------------------------------------------------------------
def _snf():
    u = lambda x: 0.5 * ((x - 1.0) ** 2).sum(-1)  # noqa: E731
    base = dist.Normal(torch.zeros(2), 2.0).to_event(1)
    return StochasticNormalizingFlow(base, [T.affine_coupling(2), MetropolisBlock(0.5, 3)], u)


@pytest.mark.parametrize("call", [
    lambda s: s.sample_and_log_weight((0,)),
    lambda s: s.sample_and_log_weight((3, 0)),
    lambda s: s.sample_trajectory((0,)),
    lambda s: s.rsample((0,)),
    lambda s: s.importance_weights(0),
], ids=["sample_and_log_weight", "zero_inner_dim", "sample_trajectory", "rsample", "importance_weights"])
def test_snf_draw_of_no_samples_is_a_clear_error(call):
    with pytest.raises(ValueError, match=r"sample_shape \(.*0,?\).*dimension < 1.*at least one sample"):
        call(_snf())


def test_snf_draw_of_one_sample_still_works():
    x, log_w = _snf().sample_and_log_weight((1,))
    assert x.shape == (1, 2) and log_w.shape == (1,) and bool(torch.isfinite(log_w).all())


# -- 2. non-finite observed data -------------------------------------------------------------------
def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def masked_model(y):  # the fix the error suggests, without the placeholder: NaN entries masked out
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)), poutine.mask(mask=torch.isfinite(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def dist_masked_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0).mask(torch.isfinite(y)), obs=y)


def obs_mask_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y, obs_mask=torch.isfinite(y))


Y_BAD = torch.tensor([0.3, NAN, 0.7, INF])
Y_CLEAN = torch.tensor([0.3, 0.7])
BAD_DATA = r"observed site 'y' holds 2 non-finite \(NaN/inf\) value\(s\) of 4.*Drop or impute.*poutine\.mask"


@pytest.mark.parametrize("validation", [False, True])
def test_nonfinite_observations_are_named_by_importance_sample(validation):
    with pyro.validation_enabled(validation), pytest.raises(ValueError, match=BAD_DATA):
        importance_sample(model, AutoNormal(model), Y_BAD, num_samples=100)


@pytest.mark.parametrize("validation", [False, True])
def test_nonfinite_observations_are_named_by_model_potential_and_autosnf(validation):
    with pyro.validation_enabled(validation):
        with pytest.raises(ValueError, match=BAD_DATA):
            ModelPotential.from_model(model, Y_BAD)
        with pytest.raises(ValueError, match="observed site 'y'.*AutoSNF would give every particle"):
            AutoSNF(model, num_blocks=1)(Y_BAD)


def test_partly_masked_nonfinite_observation_counts_only_unmasked_entries():
    def half_masked(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)), poutine.mask(mask=~torch.isnan(y)):  # the inf stays in
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="holds 1 non-finite"):
        ModelPotential.from_model(half_masked, Y_BAD)


@pytest.mark.parametrize("masked", [masked_model, dist_masked_model], ids=["poutine.mask", "dist.mask"])
def test_masked_nonfinite_observations_give_the_clean_potential_and_gradient(masked):
    u_masked, u_clean = ModelPotential.from_model(masked, Y_BAD), ModelPotential.from_model(model, Y_CLEAN)
    x = torch.tensor([[-0.4], [0.2], [1.3]], requires_grad=True)
    v_masked = u_masked(x)
    (g_masked,) = torch.autograd.grad(v_masked.sum(), x)
    x2 = x.detach().requires_grad_()
    v_clean = u_clean(x2)
    (g_clean,) = torch.autograd.grad(v_clean.sum(), x2)
    assert torch.allclose(v_masked, v_clean) and torch.allclose(g_masked, g_clean)
    assert bool((g_clean != 0).all())  # the masked NaN no longer zeroes the gradient


def test_obs_mask_with_nonfinite_observations_builds_a_finite_potential():
    u = ModelPotential.from_model(obs_mask_model, Y_BAD)
    x = torch.zeros(3, u.dim, requires_grad=True)  # mu and y_unobserved (one per data point)
    v = u(x)
    (g,) = torch.autograd.grad(v.sum(), x)
    assert u.dim == 5 and bool(torch.isfinite(v).all()) and bool(torch.isfinite(g).all())


def test_masked_nonfinite_observations_importance_sample_as_clean_data():
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero weights, no k-hat warning
        pyro.set_rng_seed(1)
        guide = AutoNormal(masked_model, init_scale=0.6)
        masked = importance_sample(masked_model, guide, Y_BAD, num_samples=200)
        pyro.set_rng_seed(1)
        clean = importance_sample(model, AutoNormal(model, init_scale=0.6), Y_CLEAN, num_samples=200)
    assert masked.num_zero_weight == 0
    assert torch.allclose(masked.log_weights, clean.log_weights)


# -- 3. what k-hat sees ----------------------------------------------------------------------------
def bimodal_model():
    modes = dist.Normal(torch.tensor([-4.0, 4.0]), 1.0)
    pyro.sample("z", dist.MixtureSameFamily(dist.Categorical(torch.ones(2)), modes))  # log Z = 0


def test_khat_is_blind_to_a_mode_the_guide_never_visits_and_the_texts_say_so():
    def one_mode_guide():
        pyro.sample("z", dist.Normal(4.0, 1.2))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all, although log Z is off by log 2
        res = importance_sample(bimodal_model, one_mode_guide, num_samples=1000)
    assert res.khat < 0.5 and res.ess_fraction > 0.9
    assert abs(res.log_evidence + math.log(2)) < 5 * res.log_evidence_stderr + 0.01
    for text in (_NOTE, khat_verdict(0.2)):
        assert "never visits" in text and "wrong mode" not in text
    assert "different initialisations" in _NOTE and "misplaced where it has mass" in _NOTE


def test_khat_warning_says_heavy_tails_where_the_guide_has_mass():
    def narrow_guide():
        pyro.sample("z", dist.Normal(4.0, 0.3))

    with pytest.warns(UserWarning, match="PSIS k-hat") as record:
        importance_sample(bimodal_model, narrow_guide, num_samples=1000)
    text = " ".join(str(w.message) for w in record if "PSIS k-hat" in str(w.message))
    assert "heavy-tailed" in text and "too narrow or misplaced" in text
    assert "wrong mode" not in text and "never visits" in text


# -- 4. Pyro's max_plate_nesting guess -------------------------------------------------------------
@pytest.mark.parametrize("num_particles", [1, 4])
def test_autosnf_adds_no_plate_dim_to_pyros_max_plate_nesting_guess(num_particles, caplog):
    y = torch.tensor([0.3, 1.1, 0.7])
    guesses = []
    for make in (AutoNormal, lambda m: AutoSNF(m, num_blocks=1)):
        pyro.clear_param_store()
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
        SVI(model, make(model), pyro.optim.Adam({"lr": 0.01}), elbo).step(y)
        guesses.append(elbo.max_plate_nesting)
    # Pyro guesses the model's depth (1) plus one dim for its own particle plate when num_particles > 1
    assert guesses == [1 + (num_particles > 1)] * 2


def test_explicit_max_plate_nesting_silences_the_guess_and_trains_autosnf(caplog):
    y = torch.tensor([0.3, 1.1, 0.7])
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)  # the model's own
    svi = SVI(model, AutoSNF(model, num_blocks=1), pyro.optim.Adam({"lr": 0.01}), elbo)
    with caplog.at_level(logging.INFO, logger="pyro"):
        losses = [svi.step(y) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses) and elbo.max_plate_nesting == 2
    assert "Guessed max_plate_nesting" not in caplog.text
