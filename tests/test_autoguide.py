"""AutoSNF: exact path weights, Pyro inference integration, save/load and errors.

Statistical tolerances: log evidence within 4 delta-method standard errors (and an absolute
bound), posterior means within a fraction of the posterior sd (Monte Carlo error of the
self-normalised estimate is about sd / sqrt(ESS), far below the bounds used).
"""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import init_to_value
from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights
from pyro.infer.predictive import WeighedPredictive

from pyro_snf import StochasticNormalizingFlow
from pyro_snf.infer import AutoSNF
from pyro_snf.weights import ImportanceWeights

F64 = torch.float64



# -- conjugate models with exact log evidence and posterior moments ------------------------------
def linear_regression(n=20, d=3, sigma=0.5):
    """w ~ N(0, I), y ~ N(X w, sigma^2): Gaussian posterior, Gaussian evidence."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = X @ torch.randn(d, generator=g, dtype=F64) + sigma * torch.randn(n, generator=g, dtype=F64)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1))
        with pyro.plate("data", n):
            pyro.sample("y", dist.Normal((X * w).sum(-1), sigma), obs=y)

    log_z = dist.MultivariateNormal(torch.zeros(n, dtype=F64), sigma**2 * torch.eye(n, dtype=F64) + X @ X.T)
    cov = torch.linalg.inv(torch.eye(d, dtype=F64) + X.T @ X / sigma**2)
    return model, (X, y), float(log_z.log_prob(y)), {"w": (cov @ X.T @ y / sigma**2, cov.diagonal().sqrt())}


def normal_precision(n=15, a=2.0, b=1.0, mu0=0.3):
    """tau ~ Gamma(a, b), y ~ N(mu0, 1/tau): a positive latent (log-Jacobian in the weights)."""
    g = torch.Generator().manual_seed(2)
    y = mu0 + 0.7 * torch.randn(n, generator=g, dtype=F64)

    def model(y):
        tau = pyro.sample("tau", dist.Gamma(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)))
        with pyro.plate("data", n):
            pyro.sample("y", dist.Normal(mu0, tau.rsqrt()), obs=y)

    an, bn = a + n / 2, b + float(((y - mu0) ** 2).sum()) / 2
    log_z = (a * math.log(b) - math.lgamma(a) + math.lgamma(an) - an * math.log(bn)
             - n / 2 * math.log(2 * math.pi))
    moments = (torch.tensor(an / bn, dtype=F64), torch.tensor(an**0.5 / bn, dtype=F64))
    return model, (y,), log_z, {"tau": moments}


def hierarchical(J=6, s0=2.0, tau=1.0):
    """mu ~ N(0, s0^2), theta_j ~ N(mu, tau^2) in a plate, y_j ~ N(theta_j, sigma_j^2)."""
    g = torch.Generator().manual_seed(3)
    sig = 0.5 + torch.rand(J, generator=g, dtype=F64)
    y = 1.0 + 1.5 * torch.randn(J, generator=g, dtype=F64)

    def model(y, sig):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), s0))
        with pyro.plate("groups", J):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sig), obs=y)

    eye = torch.eye(J, dtype=F64)
    cov_y = s0**2 + torch.diag(tau**2 + sig**2)
    log_z = dist.MultivariateNormal(torch.zeros(J, dtype=F64), cov_y).log_prob(y)
    prior = torch.full((J + 1, J + 1), s0**2, dtype=F64)
    prior[1:, 1:] += tau**2 * eye
    H = torch.cat([torch.zeros(J, 1, dtype=F64), eye], 1)
    gain = prior @ H.T @ torch.linalg.inv(H @ prior @ H.T + torch.diag(sig**2))
    mean, sd = gain @ y, (prior - gain @ H @ prior).diagonal().sqrt()
    return model, (y, sig), float(log_z), {"mu": (mean[0], sd[0]), "theta": (mean[1:], sd[1:])}


def importance(model, guide, args, n):
    """Log-weights ``log p(y, x) - log q_path(x)`` and the model trace, from Pyro's own tool."""
    with torch.no_grad():
        log_w, model_trace, _ = vectorized_importance_weights(
            model, guide, *args, num_samples=n, max_plate_nesting=1, normalized=False)
    return ImportanceWeights(log_w.detach()), model_trace


def train(model, guide, args, steps, lr=0.03, particles=8, adapt=False):
    """SVI steps; with ``adapt`` inside ``guide.adapting()`` (the blocks' step sizes adapt too)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(particles, vectorize_particles=True))
    with guide.adapting() if adapt else contextlib.nullcontext():
        return [svi.step(*args) for _ in range(steps)]


@pytest.mark.slow
@pytest.mark.parametrize("make, flow", [(linear_regression, "coupling"), (normal_precision, "coupling"),
                                        (linear_regression, "none"), (hierarchical, "none")])
def test_trained_guide_log_evidence_and_posterior_means(make, flow):
    """300 steps. Coupling flows train slowly on Gaussian posteriors (hierarchical: ESS ~8% after
    300 steps, fine but with a thin margin on the 0.05-nat bound), so that model uses flow="none"."""
    model, args, log_z, moments = make()
    guide = AutoSNF(model, flow=flow)
    losses = train(model, guide, args, steps=300)
    assert all(math.isfinite(v) for v in losses)
    iw, trace = importance(model, guide, args, 50000)
    err, se = float(iw.log_evidence) - log_z, float(iw.log_evidence_stderr)
    assert abs(err) < 4 * se + 1e-3 and abs(err) < 0.05, (err, se, float(iw.ess_fraction))
    w = iw.normalized_weights
    for name, (mean, sd) in moments.items():
        value = trace.nodes[name]["value"].reshape(w.shape[0], -1)
        estimate = (w[:, None] * value).sum(0)
        assert ((estimate - mean.reshape(-1)) / sd.reshape(-1)).abs().max() < 0.15, name


def randomised_guide(block, **kw):
    """An untrained guide with arbitrary (random) flow weights, near but not at the posterior."""
    model, args, log_z, moments = linear_regression()
    mean, sd = moments["w"]
    guide = AutoSNF(model, flow="coupling", init_loc_fn=init_to_value(values={"w": mean + 0.3 * sd}),
                    init_scale=0.2, block=block, num_blocks=2, block_kwargs={"step_size": 0.2}, **kw)
    guide(*args)
    with torch.no_grad():
        for name, p in guide.chain.named_parameters():
            if ".nn." in name:
                p.add_(0.1 * torch.randn_like(p))
    return model, args, log_z, guide


@pytest.mark.parametrize("block", ["mala", "metropolis", "langevin", "hmc", "underdamped"])
def test_untrained_guide_is_unbiased(block):
    """E[w] = p(y) for any parameters: log Z within 4 standard errors."""
    model, args, log_z, guide = randomised_guide(block, betas=[0.4, 1.0])
    iw, _ = importance(model, guide, args, 20000)
    err, se = float(iw.log_evidence) - log_z, float(iw.log_evidence_stderr)
    assert se < 0.05 and abs(err) < 4 * se, (err, se)


def test_stagewise_training_without_blocks_then_adapting_blocks():
    """``without_blocks()`` gives the exact flow-only guide (blocks never run); with the blocks on,
    SVI steps inside ``adapting()`` adapt their step sizes toward MALA's 0.574 acceptance and the
    weights stay exact."""
    model, args, log_z, _ = linear_regression()
    guide = AutoSNF(model, flow="none", num_blocks=2, block_kwargs={"step_size": 0.01})
    with guide.without_blocks():
        train(model, guide, args, steps=200)
        iw_flow, _ = importance(model, guide, args, 20000)
    assert all(info is None for info in guide.info)  # the blocks never ran
    assert [float(b.step_size) for b in guide.blocks] == pytest.approx([0.01, 0.01])
    err, se = float(iw_flow.log_evidence) - log_z, float(iw_flow.log_evidence_stderr)
    assert se < 0.05 and abs(err) < 4 * se, (err, se)
    rates = []
    for _ in range(150):
        train(model, guide, args, steps=1, adapt=True)
        rates.append([float(info.acceptance_rate) for info in guide.info])
    late = torch.tensor(rates[-50:]).mean(0)  # 50 steps x 8 particles x 2 moves per block
    assert ((late - 0.574).abs() < 0.12).all(), late
    assert all(float(b.step_size) > 0.1 for b in guide.blocks)
    iw, _ = importance(model, guide, args, 20000)
    err, se = float(iw.log_evidence) - log_z, float(iw.log_evidence_stderr)
    assert se < 0.05 and abs(err) < 4 * se + 1e-3, (err, se)
    with pytest.raises(RuntimeError, match="boom"), guide.without_blocks():
        raise RuntimeError("boom")
    assert guide._blocks_on  # restored after an error


def test_adapt_step_sizes_tunes_the_blocks_without_training():
    model, args, _, _ = linear_regression()
    guide = AutoSNF(model, flow="none", num_blocks=2, block_kwargs={"step_size": 0.05})
    with guide.without_blocks():
        train(model, guide, args, steps=100)
        with pytest.raises(RuntimeError, match="inside without_blocks"):
            guide.adapt_step_sizes(*args)
    params = {k: v.detach().clone() for k, v in guide.chain.named_parameters()}
    steps = guide.adapt_step_sizes(*args, num_draws=200, num_particles=128)
    assert all(s > 0.2 for s in steps)
    assert all(abs(float(info.acceptance_rate) - 0.574) < 0.1 for info in guide.info), guide.info
    assert all(torch.equal(v, params[k]) for k, v in guide.chain.named_parameters())  # no training
    with pytest.raises(ValueError, match="no block of this guide adapts"):
        AutoSNF(model, num_blocks=1, block_kwargs={"learn_step_size": True}).adapt_step_sizes(*args)


def test_step_size_learning_replaces_adaptation_when_asked():
    model, args, _, _ = linear_regression()
    learned = AutoSNF(model, flow="none", num_blocks=1, block_kwargs={"learn_step_size": True})
    assert not learned.blocks[0].adapt_step_size
    assert isinstance(learned.blocks[0].log_step_size, torch.nn.Parameter)
    adapted = AutoSNF(model, flow="none", num_blocks=1)
    assert adapted.blocks[0].adapt_step_size and adapted.blocks[0].target_accept == 0.574
    assert not AutoSNF(model, block="langevin", num_blocks=1).blocks[0].adapt_step_size


def test_get_posterior_weights_agree_with_pyro():
    """The guide as a StochasticNormalizingFlow over unconstrained latents: same exact weights."""
    model, args, log_z, guide = randomised_guide("mala")
    snf = guide.get_posterior(*args)
    assert isinstance(snf, StochasticNormalizingFlow)
    x, log_w = snf.sample_and_log_weight((20000,))
    iw = ImportanceWeights(log_w)
    assert x.shape == (20000, 3) and abs(float(iw.log_evidence) - log_z) < 4 * float(iw.log_evidence_stderr)


def test_all_elbos_agree_with_the_importance_weights():
    """Same seed: Trace_ELBO, TraceMeanField_ELBO (positive latent: the Jacobian is in the factor,
    not in a Delta's log_density that KL(Delta, p) would drop) and -mean(log w) coincide."""
    model, args, _, _ = normal_precision()
    guide = AutoSNF(model, init_scale=0.3)
    guide(*args)
    losses = []
    for elbo in (Trace_ELBO, TraceMeanField_ELBO):
        pyro.set_rng_seed(5)
        elbo = elbo(num_particles=64, vectorize_particles=True, max_plate_nesting=1)
        with torch.no_grad():  # an evaluation: the blocks' step sizes do not adapt
            losses.append(elbo.loss(model, guide, *args))
    pyro.set_rng_seed(5)
    iw, _ = importance(model, guide, args, 64)
    losses.append(-float(iw.log_weights.mean()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-12) == pytest.approx(losses[2], rel=1e-12)


def test_plain_and_vectorised_particles_agree():
    model, args, _, _ = hierarchical()
    guide = AutoSNF(model, init_scale=0.5)
    guide(*args)
    steps = [float(b.step_size) for b in guide.blocks]
    plain = torch.tensor([Trace_ELBO().loss(model, guide, *args) for _ in range(120)], dtype=F64)
    assert [float(b.step_size) for b in guide.blocks] == steps  # calls with gradients adapt nothing
    iw, _ = importance(model, guide, args, 4000)
    vectorised = -iw.log_weights
    se = (plain.var() / 120 + vectorised.var() / 4000).sqrt()
    assert abs(float(plain.mean() - vectorised.mean())) < 4 * float(se)
    assert math.isfinite(Trace_ELBO(num_particles=3).loss(model, guide, *args))


def test_renyi_meanfield_and_sequential_particles_train():
    model, args, _, _ = normal_precision()
    guide = AutoSNF(model, init_scale=0.3)
    for elbo in (RenyiELBO(alpha=0.5, num_particles=4, vectorize_particles=True), RenyiELBO(num_particles=2),
                 TraceMeanField_ELBO(num_particles=4, vectorize_particles=True), Trace_ELBO(num_particles=2)):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        assert all(math.isfinite(svi.step(*args)) for _ in range(3))


def test_predictive_weighed_predictive_and_psis():
    model, args, _, _ = hierarchical()
    guide = AutoSNF(model, init_scale=0.5)
    train(model, guide, args, steps=5)
    for parallel in (True, False):
        samples = Predictive(model, guide=guide, num_samples=7, parallel=parallel)(*args)
        assert samples["mu"].reshape(7).shape == (7,) and samples["theta"].shape == (7, 6)
        assert samples["y"].shape == (7, 6)
        weighed = WeighedPredictive(model, guide=guide, num_samples=7, parallel=parallel)(*args)
        assert weighed.log_weights.shape == (7,) and torch.isfinite(weighed.log_weights).all()
        assert weighed.samples["theta"].shape == (7, 6)
    k = psis_diagnostic(model, guide, *args, num_particles=200, max_simultaneous_particles=100)
    assert math.isfinite(k)


@pytest.mark.parametrize("options", [
    dict(init_scale=0.5, block="underdamped", block_kwargs={"learn_beta": True}),
    dict(init_scale=0.5, flow="coupling"),  # MALA, adapted steps
])
def test_param_store_round_trip(tmp_path, options):
    model, args, _, _ = hierarchical()
    guide = AutoSNF(model, **options)
    train(model, guide, args, steps=3, adapt=guide.blocks[0].adapt_step_size)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.set_rng_seed(7)
    with torch.no_grad():  # sampling calls: adapted step sizes stay as saved
        expected = guide(*args)
    pyro.clear_param_store()
    restored = AutoSNF(model, **options)
    pyro.get_param_store().load(tmp_path / "params.pt")
    with torch.no_grad():
        restored(*args)  # set-up (draws from the prior for init_loc_fn), then the loaded parameters
        pyro.set_rng_seed(7)
        actual = restored(*args)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name])
    steps = [float(b.step_size) for b in guide.blocks]
    assert [float(b.step_size) for b in restored.blocks] == steps
    if restored.blocks[0].adapt_step_size:
        assert steps[0] != 0.5  # adapted during the 3 steps, and restored from the param store


def test_no_grad_sampling_and_helpers():
    model, args, _, _ = normal_precision()
    guide = AutoSNF(model, init_scale=0.3)
    with torch.no_grad():
        out = guide(*args)
    assert not out["tau"].requires_grad and out["tau"] > 0
    assert len(guide.blocks) == 2 and len(guide.info) == 2 and guide.info[0].acceptance_rate > 0
    assert isinstance(guide.layers[-1], torch.nn.Module) and guide.get_potential(*args).dim == 1
    q = guide.quantiles([0.1, 0.5, 0.9], *args)["tau"]
    assert q.shape == (3,) and bool((q[1:] > q[:-1]).all()) and bool((q > 0).all())
    assert guide.median(*args)["tau"].shape == ()
    with pytest.raises(NotImplementedError, match="stochastic"):
        guide.get_transform(*args)


def test_dtype_and_device_follow_the_model(device, dtype):
    def model(y):
        s = pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=dtype, device=device), 1.0))
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3, dtype=dtype, device=device)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(p[..., 0], s), obs=y)

    y = torch.randn(5, dtype=dtype, device=device)
    guide = AutoSNF(model, flow="iaf")
    loss = train(model, guide, (y,), steps=2)
    out = guide(y)
    assert all(math.isfinite(v) for v in loss)
    assert out["p"].dtype == dtype and out["p"].device.type == device.type
    assert all(p.dtype == dtype for p in guide.chain.parameters())


@pytest.mark.parametrize("flow", ["coupling", "iaf", "affine", "none",
                                  lambda d: pyro.distributions.transforms.Planar(d)])
def test_flow_options_and_one_dimensional_fallback(flow):
    model, args, _, _ = linear_regression()
    one_dim, args1, _, _ = normal_precision()
    for m, a in ((model, args), (one_dim, args1)):
        pyro.clear_param_store()
        guide = AutoSNF(m, flow=flow, block="langevin", num_blocks=1, block_kwargs={"step_size": 0.01})
        assert all(math.isfinite(v) for v in train(m, guide, a, steps=2))
    with pytest.raises(ValueError, match="param store holds"):  # the 1-d guide's parameters
        AutoSNF(model, flow=flow, num_blocks=1)(*args)
    pyro.clear_param_store()
    plain_flow = AutoSNF(model, num_blocks=0)
    assert all(math.isfinite(v) for v in train(model, plain_flow, args, steps=2)) and plain_flow.blocks == []


def test_nonfinite_model_density_never_gives_nan_guide_values():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("f", torch.where(x > 1.0, torch.full_like(x, float("nan")), torch.zeros_like(x)))

    guide = AutoSNF(model, init_loc_fn=init_to_value(values={"x": torch.tensor(0.8)}), init_scale=0.5)
    with pyro.plate("particles", 400, dim=-1), pyro.poutine.trace() as tracer:
        out = guide()
    log_factor = tracer.trace.nodes["_AutoSNF_path"]["fn"].log_factor
    dead = out["x"] > 1.0  # started where the model has no density: frozen with zero weight
    assert torch.isfinite(out["x"]).all() and not torch.isnan(log_factor).any()
    assert dead.any() and (log_factor[dead] == math.inf).all() and torch.isfinite(log_factor[~dead]).all()


def test_bad_models_and_options_raise_clear_errors():
    def discrete():
        pyro.sample("k", dist.Categorical(torch.ones(3)))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def observed_only():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(NotImplementedError, match="'k' is discrete.*enumeration"):
        AutoSNF(discrete)()
    with pytest.raises(NotImplementedError, match="subsampled plate 'data'"):
        AutoSNF(subsampled)(torch.zeros(100))
    with pytest.raises(ValueError, match="no latent sample sites"):
        AutoSNF(observed_only)()
    with pytest.raises(ValueError, match="unknown block 'gibbs'"):
        AutoSNF(observed_only, block="gibbs")
    with pytest.raises(ValueError, match="flow must be one of"):
        AutoSNF(observed_only, flow="maf")
    with pytest.raises(ValueError, match="one entry per block"):
        AutoSNF(observed_only, num_blocks=2, betas=[1.0])


def test_old_block_keywords_still_work_with_a_deprecation_warning():
    model, args, _, _ = linear_regression()
    new = AutoSNF(model, block="hmc", num_blocks=2, block_kwargs={"num_steps": 1, "step_size": 0.3,
                                                                  "num_leapfrog_steps": 4})
    with pytest.warns(DeprecationWarning, match="block_kwargs"):
        old = AutoSNF(model, block="hmc", num_blocks=2, num_steps=1, step_size=0.3,
                      block_kwargs={"num_leapfrog_steps": 4})
    assert repr(old.blocks) == repr(new.blocks) and old.blocks[0].adapt_step_size
    with pytest.raises(TypeError, match="unexpected keyword"):
        AutoSNF(model, num_block=2)
    with pytest.raises(ValueError, match="per-block step sizes"), pytest.warns(DeprecationWarning):
        AutoSNF(model, step_size=[0.1, 0.2])


def test_block_factory_and_ready_made_blocks():
    model, args, _, _ = linear_regression()
    from pyro_snf.blocks import MALABlock

    guide = AutoSNF(model, block=lambda beta: MALABlock(0.2, 1, beta=beta), num_blocks=3)
    assert [round(b.beta, 2) for b in guide.blocks] == [0.25, 0.5, 0.75]  # MALA: adjusted schedule
    assert all(math.isfinite(v) for v in train(model, guide, args, steps=2))
    with pytest.raises(ValueError, match="takes no block keyword arguments"):
        AutoSNF(model, block=lambda beta: MALABlock(0.2, beta=beta), block_kwargs={"num_steps": 3})
    unadjusted = AutoSNF(model, block="langevin", num_blocks=1)
    with pytest.raises(ValueError, match="no block of this guide adapts"), unadjusted.adapting():
        pass
