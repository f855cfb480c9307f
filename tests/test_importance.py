"""importance_sample against conjugate models with exact log evidence.

Tolerances: log evidence within 4 delta-method standard errors (and a few hundredths of a nat);
posterior moments within a small fraction of the posterior sd (MC error ~ sd / sqrt(ESS)).
Seeds are fixed by tests/conftest.py.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import autoguide
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from pyro_snf.blocks import MetropolisBlock
from pyro_snf.diagnostics.arviz_compat import MIN_PSIS_SAMPLES
from pyro_snf.infer.importance import importance_sample
from pyro_snf.path import forward_path

torch.set_num_threads(1)


# -- normal-normal: mu ~ N(0, s0), y_i ~ N(mu, s) ------------------------------------------------
S0, S = 2.0, 1.0


def nn_data(dtype=torch.float64):
    return torch.tensor([0.8, 1.9, 1.2, 0.4, 1.5, 2.2], dtype=dtype)


def nn_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), S0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, S), obs=y)


def nn_exact(y):
    n = len(y)
    cov = S**2 * torch.eye(n, dtype=torch.float64) + S0**2
    log_z = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(y.double())
    prec = 1 / S0**2 + n / S**2
    return float(log_z), float(y.double().sum() / S**2 / prec), prec**-0.5


def nn_guide(y, shift=0.3, widen=1.3):
    _, m, sd = nn_exact(y)
    return AutoNormal(nn_model, init_loc_fn=init_to_value(values={"mu": torch.tensor(m + shift * sd)}),
                      init_scale=widen * sd)


def nn_log_joint(mu, y):
    prior = dist.Normal(0.0, S0).log_prob(mu)
    return prior + dist.Normal(mu[:, None], S).log_prob(y).sum(-1)


# -- eight-schools-like with known tau: theta_j ~ N(MU0, TAU), y_j ~ N(theta_j, sigma_j) -------
MU0, TAU = 5.0, 8.0
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])
Y8 = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])


def schools_model(y):
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(MU0, TAU))
        pyro.sample("obs", dist.Normal(theta, SIGMA), obs=y)


def schools_exact():
    log_z = dist.Normal(MU0, (TAU**2 + SIGMA**2).sqrt()).log_prob(Y8).sum()
    prec = 1 / TAU**2 + 1 / SIGMA**2
    return float(log_z), (MU0 / TAU**2 + Y8 / SIGMA**2) / prec, prec.rsqrt()


def check_evidence(res, exact, nats=0.03):
    err = abs(res.log_evidence - exact)
    assert math.isfinite(res.log_evidence_stderr)
    assert err < 4 * res.log_evidence_stderr + 1e-4, (res.log_evidence, exact, res.log_evidence_stderr)
    assert err < nats


def test_normal_normal_autonormal(dtype):
    y = nn_data(dtype)
    exact, m, sd = nn_exact(y)
    res = importance_sample(nn_model, nn_guide(y), y, num_samples=20_000)
    check_evidence(res, exact)
    assert res.log_weights.shape == (20_000,) and res.samples["mu"].shape == (20_000,)
    assert abs(float(res.posterior_mean()["mu"]) - m) < 0.05 * sd
    assert abs(float(res.posterior_sd()["mu"]) / sd - 1) < 0.05
    q = res.posterior_quantiles([0.1, 0.5, 0.9])["mu"].double()
    exact_q = m + sd * torch.tensor([-1.2816, 0.0, 1.2816], dtype=torch.float64)
    assert torch.allclose(q, exact_q, atol=0.06 * sd)
    assert res.khat < 0.5 and res.ess_fraction > 0.5 and res.num_zero_weight == 0


@pytest.mark.filterwarnings("ignore:ConditionalAutoRegressiveNN input_dim = 1")
@pytest.mark.parametrize("name", ["AutoDiagonalNormal", "AutoMultivariateNormal",
                                  "AutoLowRankMultivariateNormal", "AutoIAFNormal"])
def test_other_autoguides(name):
    y = nn_data()
    exact, m, sd = nn_exact(y)
    if name == "AutoIAFNormal":  # network zeroed (a fixed affine map): base N(0, 1) covers N(m, sd)
        guide = autoguide.AutoIAFNormal(nn_model, hidden_dim=[8])
        guide(y)
        with torch.no_grad():
            for p in guide.parameters():
                p.zero_()
    else:
        guide = getattr(autoguide, name)(nn_model, init_loc_fn=init_to_value(values={"mu": torch.tensor(m)}),
                                         init_scale=1.3 * sd)
    res = importance_sample(nn_model, guide, y, num_samples=20_000)
    check_evidence(res, exact)
    assert res.khat < 0.7 and set(res.samples) == {"mu"}


def test_linear_regression_hand_written_mvn_guide():
    """Bayesian linear regression, known noise; a plain (non-auto) guide with an event-dim site."""
    n, d, tau, sigma = 30, 3, 1.5, 0.5
    x = torch.randn(n, d, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64) + sigma * torch.randn(n, dtype=torch.float64)

    def model(x, y):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(d, dtype=x.dtype), tau).to_event(1))
        with pyro.plate("data", n):
            pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)  # vectorisable over beta

    exact = float(dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64),
                                          sigma**2 * torch.eye(n) + tau**2 * x @ x.T).log_prob(y))
    cov = torch.linalg.inv(x.T @ x / sigma**2 + torch.eye(d) / tau**2)
    mean = cov @ x.T @ y / sigma**2
    chol = torch.linalg.cholesky(cov)

    def guide(x, y):
        pyro.sample("beta", dist.MultivariateNormal(mean + 0.2 * chol @ torch.ones(d, dtype=x.dtype),
                                                    scale_tril=1.25 * chol))

    res = importance_sample(model, guide, x, y, num_samples=20_000, batch_size=6000)
    check_evidence(res, exact)
    assert res.samples["beta"].shape == (20_000, d)
    sd = cov.diagonal().sqrt()
    assert ((res.posterior_mean()["beta"] - mean).abs() < 0.05 * sd).all()


def test_schools_automvn_plates_and_aux_sites():
    """AutoMultivariateNormal: an auxiliary latent site plus Delta sites inside a plate."""
    exact, m, sd = schools_exact()
    guide = AutoMultivariateNormal(schools_model, init_loc_fn=init_to_value(values={"theta": m}),
                                   init_scale=float(1.2 * sd.max()))
    res = importance_sample(schools_model, guide, Y8, num_samples=20_000)
    check_evidence(res, exact)
    assert res.samples["theta"].shape == (20_000, 8)
    assert ((res.posterior_mean()["theta"] - m).abs() < 0.05 * sd).all()
    assert res.sites["theta"].plates == {-1: "schools"}


def test_log_weights_are_exact_per_particle_for_any_batch_size():
    y = nn_data()
    for batch_size in (None, 7, 500):
        pyro.set_rng_seed(1)
        res = importance_sample(nn_model, nn_guide(y), y, num_samples=500, batch_size=batch_size)
        mu = res.samples["mu"].double()
        _, m, sd = nn_exact(y)
        log_q = dist.Normal(m + 0.3 * sd, 1.3 * sd).log_prob(mu)
        expected = nn_log_joint(mu, y) - log_q
        # the guide's parameters are float32, the data float64
        assert torch.allclose(res.log_weights, expected, atol=1e-5, rtol=0)
        assert torch.allclose(res.log_model, nn_log_joint(mu, y), atol=1e-6, rtol=0)
    # a model with a plate (particle dim -2): schools
    _, m8, sd8 = schools_exact()
    guide = AutoNormal(schools_model, init_loc_fn=init_to_value(values={"theta": m8}), init_scale=10.0)
    res = importance_sample(schools_model, guide, Y8, num_samples=300, batch_size=64)
    th = res.samples["theta"]
    log_p = (dist.Normal(MU0, TAU).log_prob(th) + dist.Normal(th, SIGMA).log_prob(Y8)).sum(-1)
    log_q = dist.Normal(m8, 10.0).log_prob(th).sum(-1)
    assert torch.allclose(res.log_weights, log_p - log_q, atol=1e-3, rtol=0)


def test_batching_gives_same_statistics():
    y = nn_data()
    exact, m, sd = nn_exact(y)
    whole = importance_sample(nn_model, nn_guide(y), y, num_samples=20_000, batch_size=20_000)
    pyro.clear_param_store()
    parts = importance_sample(nn_model, nn_guide(y), y, num_samples=20_000, batch_size=3_000)
    assert parts.log_weights.shape == whole.log_weights.shape == (20_000,)
    se = math.hypot(whole.log_evidence_stderr, parts.log_evidence_stderr)
    assert abs(whole.log_evidence - parts.log_evidence) < 4 * se
    for res in (whole, parts):
        check_evidence(res, exact)
        assert abs(float(res.posterior_mean()["mu"]) - m) < 0.05 * sd
    assert abs(whole.ess_fraction - parts.ess_fraction) < 0.02


def test_nan_log_density_gets_zero_weight_and_is_counted():
    """A NaN factor for mu > c: those particles get zero weight; the estimate targets mu <= c."""
    y = nn_data()
    exact, m, sd = nn_exact(y)
    c = m + 0.5 * sd

    def bad_model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), S0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, S), obs=y)
        pyro.factor("bad", torch.where(mu > c, torch.full_like(mu, math.nan), torch.zeros_like(mu)))

    guide = nn_guide(y)
    with pyro.validation_enabled(False), pytest.warns(RuntimeWarning, match="zero importance weight"):
        res = importance_sample(bad_model, guide, y, num_samples=20_000)
    n_bad = int((res.samples["mu"] > c).sum())
    assert n_bad > 1000
    assert res.num_nonfinite == n_bad == res.num_zero_weight
    assert not torch.isnan(res.log_weights).any()
    truncated = exact + math.log(0.5 * (1 + math.erf(0.5 / math.sqrt(2))))  # P(mu <= m + sd/2)
    check_evidence(res, truncated)
    assert f"{n_bad} particles ({n_bad} with NaN/+inf" in res.summary()


@pytest.mark.filterwarnings("ignore:Encountered \\+inf")  # Pyro's own trace check
def test_plus_inf_and_all_zero_weights():
    y = nn_data()

    def inf_model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), S0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, S), obs=y)
        pyro.factor("f", torch.where(mu > 2.0, torch.full_like(mu, math.inf), torch.zeros_like(mu)))

    with pytest.warns(RuntimeWarning):
        res = importance_sample(inf_model, nn_guide(y), y, num_samples=2000)
    assert res.num_nonfinite == int((res.samples["mu"] > 2.0).sum()) > 0
    assert math.isfinite(res.log_evidence)

    def dead_model(y):
        nn_model(y)
        pyro.factor("f", torch.tensor(-math.inf, dtype=y.dtype))

    pyro.clear_param_store()
    with pytest.warns(RuntimeWarning):
        dead = importance_sample(dead_model, nn_guide(y), y, num_samples=200, warn=True)
    assert dead.log_evidence == -math.inf and dead.num_zero_weight == 200 and dead.num_nonfinite == 0
    assert "every weight is zero" in dead.summary()
    with pytest.raises(ValueError, match="every importance weight is zero"):
        dead.resample(10)


def test_khat_good_guide_small_bad_guide_warns():
    y = nn_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = importance_sample(nn_model, nn_guide(y, shift=0.0, widen=1.5), y, num_samples=20_000)
    assert good.khat < 0.5
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="k-hat"):
        bad = importance_sample(nn_model, nn_guide(y, shift=1.0, widen=0.3), y, num_samples=20_000)
    assert bad.khat > 0.7
    assert "unreliable" in bad.summary()


def test_snf_style_guide_with_aux_site_and_factor_under_no_grad():
    """The AutoSNF pattern: auxiliary base site + pyro.factor(-sum dS) + Delta latent site."""
    y = nn_data()
    exact, m, sd = nn_exact(y)
    base = dist.Normal(torch.tensor([m + sd], dtype=torch.float64), 2 * sd).to_event(1)
    layers = [MetropolisBlock(step_size=0.8 * sd, num_steps=4)]

    def potential(x):
        return -nn_log_joint(x.reshape(-1), y).reshape(x.shape[:-1])

    def guide(y):
        z = pyro.sample("_z0", base, infer={"is_auxiliary": True})
        x, sum_ds = forward_path(layers, z, potential, lambda v: -base.log_prob(v))
        pyro.factor("_snf_path", -sum_ds, has_rsample=True)
        pyro.sample("mu", dist.Delta(x[..., 0]))

    with torch.no_grad():
        res = importance_sample(nn_model, guide, y, num_samples=20_000, batch_size=5000)
    check_evidence(res, exact)
    assert abs(float(res.posterior_mean()["mu"]) - m) < 0.05 * sd
    assert set(res.samples) == {"mu"}


def test_site_missing_from_guide_is_drawn_from_prior():
    y = nn_data()
    exact, m, sd = nn_exact(y)

    def model(y):
        pyro.sample("nuisance", dist.Gamma(2.0, 1.0))
        nn_model(y)

    guide = AutoNormal(poutine.block(model, hide=["nuisance"]),
                       init_loc_fn=init_to_value(values={"mu": torch.tensor(m)}), init_scale=1.3 * sd)
    with pytest.warns(UserWarning, match="nuisance"):
        res = importance_sample(model, guide, y, num_samples=20_000)
    check_evidence(res, exact)
    assert res.prior_sites == ("nuisance",)
    assert abs(float(res.posterior_mean()["nuisance"]) - 2.0) < 0.1
    assert "drawn from the model prior" in res.summary()


def test_resample_and_summary():
    y = nn_data()
    _, m, sd = nn_exact(y)
    res = importance_sample(nn_model, nn_guide(y), y, num_samples=10_000)
    for method in ("systematic", "multinomial"):
        draws = res.resample(4000, method=method)
        assert draws["mu"].shape == (4000,)
        assert abs(float(draws["mu"].mean()) - m) < 0.1 * sd
    assert res.resample()["mu"].shape == (10_000,)
    text = res.summary()
    for key in ("10000 particles", "log evidence", "ESS", "k-hat", "good", "zero weight", "mu", "Note"):
        assert key in text
    assert str(res) == repr(res) == text
    assert res.diagnostics()["num_samples"] == 10_000


def test_errors():
    y = nn_data()
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_samples"):
            importance_sample(nn_model, nn_guide(y), y, num_samples=bad)
    with pytest.raises(ValueError, match="batch_size"):
        importance_sample(nn_model, nn_guide(y), y, num_samples=10, batch_size=0)

    def sub_model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=3) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match="point mass"):
        importance_sample(nn_model, autoguide.AutoDelta(nn_model), y, num_samples=10)

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="subsample"):
        importance_sample(sub_model, AutoNormal(sub_model), y, num_samples=10)


def test_autosnf_guide():
    """Integration with AutoSNF (an SNF path density via auxiliary site + factor + Delta sites)."""
    autosnf = pytest.importorskip("pyro_snf.infer.autoguide").AutoSNF
    exact, m, sd = schools_exact()
    guide = autosnf(schools_model, init_loc_fn=init_to_value(values={"theta": m}),
                    init_scale=float(1.3 * sd.max()))
    with torch.no_grad():
        res = importance_sample(schools_model, guide, Y8, num_samples=10_000)
    check_evidence(res, exact, nats=0.05)
    assert res.khat < 0.7 and res.samples["theta"].shape == (10_000, 8)


def test_khat_nan_below_the_psis_minimum_is_explained():
    y = nn_data()
    with pytest.warns(UserWarning) as record:
        res = importance_sample(nn_model, nn_guide(y), y, num_samples=10)
    assert math.isnan(res.khat) and math.isfinite(res.log_evidence)
    messages = [str(w.message) for w in record if "k-hat" in str(w.message)]
    assert len(messages) == 1, messages
    assert f"k-hat is NaN: num_samples = 10 < {MIN_PSIS_SAMPLES}" in messages[0]
    assert f"at least {MIN_PSIS_SAMPLES} samples" in messages[0]
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importance_sample(nn_model, nn_guide(y), y, num_samples=10, warn=False)
        assert math.isfinite(importance_sample(nn_model, nn_guide(y), y, num_samples=MIN_PSIS_SAMPLES).khat)


def test_a_plate_holding_only_plates_takes_its_dim():
    """The particle plate goes left of a plate whose only content is another plate (its dim is taken
    all the same): the weights are those of the model without the empty plates."""
    y = nn_data()

    def model(y):
        nn_model(y)
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3):
            pass

    pyro.set_rng_seed(3)
    res = importance_sample(model, nn_guide(y), y, num_samples=300, batch_size=100)
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    ref = importance_sample(nn_model, nn_guide(y), y, num_samples=300, batch_size=100)
    assert torch.equal(res.log_weights, ref.log_weights) and torch.equal(res.samples["mu"], ref.samples["mu"])


def test_batch_dims_left_of_the_particle_dim_are_summed():
    """No plate and observations of shape (n, 1): the data dim lands left of the particle dim (-1)."""
    y = nn_data()

    def column_model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), S0))
        pyro.sample("y", dist.Normal(mu, S), obs=y[:, None])

    res = importance_sample(column_model, nn_guide(y), y, num_samples=500)
    assert torch.allclose(res.log_model, nn_log_joint(res.samples["mu"].double(), y), atol=1e-6, rtol=0)
