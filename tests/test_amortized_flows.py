"""AmortizedSNF with conditional flows (issue 12): exact weights with non-trivial flows, gradients to every
parameter, the Trace_ELBO loss against a hand-computed path ELBO, trained encoders for every block type,
and the encoder-output errors. The problem and encoder are those of test_amortized.py (probabilistic PCA
with a closed-form log p(x_i))."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_snf.infer import AmortizedSNF
from pyro_snf.path import forward_path

_spec = importlib.util.spec_from_file_location("_amortized_base", Path(__file__).parent / "test_amortized.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)  # the tests run with --import-mode=importlib: no sys.path entry
D, N, P, S, Encoder, Problem = _base.D, _base.N, _base.P, _base.S, _base.Encoder, _base.Problem


class ContextEncoder(Encoder):
    """The linear encoder plus a context of P features per data point, from its own layer."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx = torch.nn.Linear(P, P)

    def forward(self, x: torch.Tensor, *rest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, scale = super().forward(x)
        return loc, scale, torch.tanh(self.ctx(x))


def _perturb(guide: AmortizedSNF, seed: int = 0, size: float = 0.1) -> None:
    """Random readout weights: the flows are far from the identity (their log-dets matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in guide.flows.layers:
            last = layer.nn.layers[-1]
            last.weight.copy_(size * last.in_features * torch.randn(last.weight.shape, generator=g))
            last.bias.copy_(size * last.in_features * torch.randn(last.bias.shape, generator=g))


def _guide(prob: Problem, kind: str, context: bool, **kwargs) -> AmortizedSNF:
    enc = ContextEncoder() if context else Encoder()
    return AmortizedSNF(prob.model, enc, num_flows=1, flow=kind, latent_dim=D,
                        context_dim=P if context else None, **kwargs)


@pytest.mark.parametrize("kind", ["coupling", "iaf"])
@pytest.mark.parametrize("context", [False, True])
def test_flows_keep_per_datapoint_weights_exact(kind, context):
    pyro.set_rng_seed(0)
    prob = Problem()
    guide = _guide(prob, kind, context, block_kwargs={"step_size": 0.3})
    _perturb(guide)
    with torch.no_grad():
        loc, scale, ctx = guide.encode(guide.layout(prob.x), prob.x)
        w = torch.randn(5, N, D)
        layers = guide.path_layers(ctx)
        y = layers[1](layers[0](w))
    assert float((y - w[..., guide.flows.perms[0]]).abs().mean()) > 0.01  # not the identity
    assert [type(t).__name__ for t in layers].count("MALABlock") == 2 and len(layers) == 6
    ll, se = guide.log_likelihood(prob.x, num_samples=2000)
    z = (ll - prob.exact()) / se
    assert bool((z.abs() < 4).all()) and float(se.max()) < 0.3, (kind, context, z, se)


@pytest.mark.parametrize("kind", ["coupling", "iaf"])
def test_flow_only_guide_density_is_the_transformed_distributions(kind):
    """Without blocks the guide is a conditional flow: its sites' log-densities sum to the density of
    Pyro's TransformedDistribution (flows, then z = loc + scale * w), evaluated through the inverse."""
    prob = Problem()
    guide = _guide(prob, kind, True, num_blocks=0)
    _perturb(guide, size=0.3)
    tr = pyro.poutine.trace(guide).get_trace(prob.x)
    tr.compute_log_prob()
    log_q = tr.nodes["_amortized_snf_base"]["log_prob"] + tr.nodes["z"]["log_prob"]
    with torch.no_grad():
        loc, scale, ctx = guide.encode(guide.layout(prob.x), prob.x)
        layers = guide.path_layers(ctx) + [dist.transforms.AffineTransform(loc, scale, event_dim=1)]
        base = dist.Normal(torch.zeros(N, D), 1.0).to_event(1)
        exact = dist.TransformedDistribution(base, layers).log_prob(tr.nodes["z"]["value"].detach())
    assert float((log_q.detach() - base.log_prob(torch.zeros(N, D))).abs().max()) > 0.1  # not N(0, 1)
    assert torch.allclose(log_q.detach(), exact, atol=1e-4), (log_q, exact)


def test_gradients_reach_encoder_context_decoder_flows_and_step_sizes():
    prob = Problem(learn=True)
    guide = _guide(prob, "coupling", True, block_kwargs={"learn_step_size": True, "step_size": 0.2})
    _perturb(guide, size=0.1)
    Trace_ELBO().loss_and_grads(prob.model, guide, prob.x)
    enc, flow = guide.encoder, guide.flows.layers[0].nn
    for name, p in [("encoder", enc.net.weight), ("encoder context", enc.ctx.weight),
                    ("decoder", prob.decoder.weight), ("flow readout", flow.layers[-1].weight),
                    ("flow hidden", flow.layers[0].weight), ("step size", guide.blocks[1].log_step_size)]:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, name


def test_trace_elbo_is_the_hand_computed_path_elbo_with_flows_and_blocks():
    """Same seed: Trace_ELBO's loss is -sum_i [log p(x_i, z_i) - log q(z_i)] with the path density
    log q = log N(w_0) - sum dS - sum log scale, the energies written out by hand for this model."""
    prob = Problem()
    guide = _guide(prob, "coupling", True, block_kwargs={"step_size": 0.3})
    _perturb(guide, size=0.2)
    x = prob.x
    loc, scale, ctx = guide.encode(guide.layout(x), x)

    def log_joint(z):
        prior = dist.Normal(0.0, 1.0).expand([D]).to_event(1).log_prob(z)
        return prior + dist.Normal(prob.decoder(z), S).to_event(1).log_prob(x)

    def target(w):
        return -(log_joint(loc + scale * w) + scale.log().sum(-1))

    def base(w):
        return -dist.Normal(0.0, 1.0).expand([D]).to_event(1).log_prob(w)

    pyro.set_rng_seed(11)
    guide.layout(x)  # the guide's structure trace draws from the prior first
    w0 = dist.Normal(torch.zeros(N, D), 1.0).to_event(1).rsample()
    w, sum_dS = forward_path(guide.path_layers(ctx), w0.reshape(1, N, D), target, base)
    log_w = -target(w) + base(w0) + sum_dS
    assert float(sum_dS.detach().abs().sum()) > 0.1
    pyro.set_rng_seed(11)
    loss = Trace_ELBO().loss(prob.model, guide, x)
    assert loss == pytest.approx(-float(log_w.detach().sum()), rel=1e-5)


def test_trained_encoder_gives_exact_and_precise_estimates_for_every_block_type(block_case):
    """The encoder trained as a Gaussian guide (its scale shrinks to the posterior's), then every block
    type on top of it: per-datapoint log p(x_i) within 4 SE, with SEs below the untrained ones."""
    prob, enc = Problem(), Encoder()
    svi = SVI(prob.model, AmortizedSNF(prob.model, enc, num_blocks=0, name="gauss"),
              pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(150):
        svi.step(prob.x)
    assert float(enc(prob.x)[1].detach().max()) < 0.8  # trained: the start is 1.2

    guide = AmortizedSNF(prob.model, enc, num_blocks=2, block=block_case.cls, block_kwargs=block_case.kwargs)
    ll, se = guide.log_likelihood(prob.x, num_samples=1000)
    z = (ll - prob.exact()) / se
    assert bool((z.abs() < 4).all()) and float(se.max()) < 0.05, (block_case.name, z, se)


def test_encoder_output_and_flow_configuration_errors():
    prob = Problem()
    with pytest.raises(ValueError, match="pass context_dim=3"):
        AmortizedSNF(prob.model, ContextEncoder(), num_flows=1, latent_dim=D)(prob.x)
    pyro.clear_param_store()  # the failed call registered that guide's configuration
    with pytest.raises(ValueError, match=r"context of shape \(8, 3\); expected \(B, H\) = \(8, 5\)"):
        AmortizedSNF(prob.model, ContextEncoder(), num_flows=1, latent_dim=D, context_dim=5)(prob.x)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="num_flows=2 needs latent_dim"):
        AmortizedSNF(prob.model, Encoder(), num_flows=2)
    with pytest.raises(ValueError, match="pass num_flows >= 1 too"):
        AmortizedSNF(prob.model, Encoder(), context_dim=3)
    with pytest.raises(ValueError, match="flow must be one of"):
        AmortizedSNF(prob.model, Encoder(), num_flows=1, latent_dim=D, flow="spline")
    with pytest.raises(ValueError, match="built with latent_dim=3"):
        AmortizedSNF(prob.model, Encoder(), num_flows=1, latent_dim=3)(prob.x)
    pyro.clear_param_store()
    with pytest.raises(TypeError, match="pair of tensors.*or a triple.*of length 4"):
        AmortizedSNF(prob.model, lambda x: (torch.zeros(N, D),) * 4)(prob.x)
    pyro.clear_param_store()
    prob64 = Problem(torch.float64)
    guide64 = AmortizedSNF(prob64.model, Encoder(dtype=torch.float64), num_flows=1, latent_dim=D)
    with pytest.raises(TypeError, match=r"convert the flows \(guide.flows.to\(torch.float64\)\)"):
        guide64(prob64.x)
    guide64.flows.to(torch.float64)
    assert guide64(prob64.x)["z"].dtype == torch.float64
    pyro.clear_param_store()
    sub = AmortizedSNF(prob.subsampled, lambda x, idx: (torch.zeros(N, D), torch.ones(N, D), x),
                       num_flows=1, latent_dim=D, context_dim=P)  # all-N rows, context included
    assert sub(prob.x, torch.tensor([1, 5]))["z"].shape == (2, D)
    assert math.isfinite(float(sub.log_likelihood(prob.x, torch.tensor([1, 5]), num_samples=5)[0].sum()))
