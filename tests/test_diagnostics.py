"""PSIS k-hat, the ArviZ adapter (installed version, plus the 1.x branch with stand-ins) and plots."""

import dataclasses
import io
import math
import sys
import types
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from pyro_snf.diagnostics import WeightedDraws, arviz_compat, plot_marginals, plot_weights
from pyro_snf.diagnostics.arviz_compat import from_dict, khat_verdict, psis_khat
from pyro_snf.infer.importance import importance_sample

torch.set_num_threads(1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


# -- k-hat -------------------------------------------------------------------------------------
def test_psis_khat_known_tails():
    rng = np.random.default_rng(0)
    assert psis_khat(rng.normal(size=20_000)) < 0.3  # log-normal weights: all moments finite
    for alpha in (1.25, 2.5):  # Pareto(alpha) weights: k = 1 / alpha; the estimate's sd is ~0.06 here
        log_w = np.log(rng.pareto(alpha, size=20_000) + 1.0)
        assert abs(psis_khat(log_w) - 1 / alpha) < 0.15
    log_w = torch.as_tensor(np.log(rng.pareto(1.25, size=20_000) + 1.0))
    assert psis_khat(-log_w) < 0.3  # sign matters: negated weights have a bounded upper tail


def test_psis_khat_edge_cases():
    assert math.isnan(psis_khat(torch.zeros(10)))
    assert psis_khat(torch.full((100,), -math.inf)) == math.inf
    lw = 0.5 * torch.randn(1000)
    lw[:50] = -math.inf  # zero weights are allowed
    assert psis_khat(lw) < 0.5
    with pytest.raises(ValueError, match="NaN"):
        psis_khat(torch.tensor([0.0, math.nan] * 30))


def test_khat_verdict_thresholds():
    assert khat_verdict(0.2).startswith("good")
    assert khat_verdict(0.6).startswith("ok")
    assert khat_verdict(0.8).startswith("unreliable")
    assert "infinite" in khat_verdict(1.3)
    assert khat_verdict(math.nan).startswith("not computed")


def test_arviz_1x_branch_with_stand_ins(monkeypatch):
    """The 1.x calls: negated log-weights to array_stats.psislw, nested groups to from_dict."""
    calls = {}

    def fake_psislw(ary, r_eff=1.0):
        calls["psislw"] = (np.array(ary), r_eff)
        return ary, np.float64(0.42)

    def fake_from_dict(data, **kwargs):
        calls["from_dict"] = (data, kwargs)
        return "datatree"

    base = types.ModuleType("arviz_stats.base")
    base.array_stats = types.SimpleNamespace(psislw=fake_psislw)
    monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
    monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
    monkeypatch.setattr(arviz_compat, "_arviz", lambda: types.SimpleNamespace(__version__="1.3.0",
                                                                              from_dict=fake_from_dict))
    lw = np.linspace(-3, 1, 100)
    assert arviz_compat.arviz_major_version() == 1
    assert psis_khat(lw) == 0.42
    np.testing.assert_array_equal(calls["psislw"][0], -lw)
    assert calls["psislw"][1] == 1.0
    out = from_dict({"posterior": {"a": np.zeros((1, 5))}, "sample_stats": {"b": np.zeros((1, 5))}},
                    dims={"a": []}, attrs={"k": 1})
    data, kwargs = calls["from_dict"]
    assert out == "datatree" and set(data) == {"posterior", "sample_stats"}
    assert kwargs["attrs"] == {"posterior": {"k": 1}, "sample_stats": {"k": 1}}


# -- conversion and plots on a small hierarchical model ----------------------------------------
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])
Y8 = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])


def model(y):
    mu = pyro.sample("mu", dist.Normal(5.0, 3.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, 8.0))
        pyro.sample("obs", dist.Normal(theta, SIGMA), obs=y)
    with pyro.plate("groups", 2, dim=-2):
        pyro.sample("g", dist.Normal(0.0, 1.0))  # shape (2, 1): one size-1 padding axis
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.deterministic("mu2", mu * 2)


@pytest.fixture
def result():
    guide = AutoNormal(model, init_loc_fn=init_to_value(values={"mu": torch.tensor(5.0), "theta": Y8 / 3}),
                       init_scale=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k-hat of this rough guide is not the point
        return importance_sample(model, guide, Y8, num_samples=4000)


def test_result_shapes_and_sites(result):
    shapes = {name: tuple(v.shape) for name, v in result.samples.items()}
    assert shapes == {"mu": (4000,), "theta": (4000, 8), "g": (4000, 2, 1), "w": (4000, 3), "mu2": (4000,)}
    assert torch.allclose(result.samples["mu2"], 2 * result.samples["mu"])
    assert result.sites["g"].plates == {-2: "groups"} and result.sites["w"].event_dim == 1


def test_to_inference_data(result):
    idata = result.to_inference_data(1000)
    post = idata.posterior
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (1, 1000)
    assert post["theta"].dims == ("chain", "draw", "schools") and post["theta"].shape == (1, 1000, 8)
    assert post["g"].dims == ("chain", "draw", "groups") and post["g"].shape == (1, 1000, 2)
    assert post["w"].dims == ("chain", "draw", "w_dim_0")
    stats = idata.sample_stats
    assert stats["log_weight"].shape == (1, 1000) and stats["particle"].shape == (1, 1000)
    index = stats["particle"].values[0]
    np.testing.assert_allclose(stats["log_weight"].values[0], result.log_weights.double().numpy()[index])
    np.testing.assert_allclose(post["mu"].values[0], result.samples["mu"].numpy()[index])
    assert post.attrs["khat"] == result.khat and post.attrs["num_samples"] == 4000
    summary = az.summary(idata, var_names=["mu", "theta"], kind="stats")
    assert len(summary) == 9
    assert abs(summary.loc["mu", "mean"] - float(result.posterior_mean()["mu"])) < 0.3


def test_to_inference_data_coords(result):
    names = [f"s{i}" for i in range(8)]
    idata = result.to_inference_data(200, coords={"schools": names})
    assert list(idata.posterior["theta"].coords["schools"].values) == names


def test_log_weight_histogram_shows_the_bulk_despite_a_far_outlier():
    log_w = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    log_w[0] = -1500.0
    ax = plot_weights(log_w).axes[1]
    left = min(patch.get_x() for patch in ax.patches)
    assert left > -20.0  # the 4999 standard-normal log-weights spread over the histogram
    assert "not shown: 5" in "".join(t.get_text() for t in ax.texts)  # the 0.1% lowest, outlier included


def test_plots_return_figures(result):
    fig = plot_weights(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "k-hat" in "".join(t.get_text() for t in fig.axes[1].texts)
    fig.savefig(io.BytesIO(), format="png")
    assert isinstance(plot_weights(torch.randn(500)), Figure)
    ref = {"mu": torch.randn(2000) + 5.0}
    fig = plot_marginals(result, sites=["mu", "theta"], reference=ref, max_components=3)
    assert isinstance(fig, Figure) and sum(ax.axison for ax in fig.axes) == 4
    fig.savefig(io.BytesIO(), format="png")
    assert isinstance(result.plot_weights(), Figure) and isinstance(result.plot_marginals(), Figure)
    with pytest.raises(KeyError, match="nope"):
        plot_marginals(result, sites=["nope"])


@dataclasses.dataclass
class PlainDraws:
    """Weighted draws that are not an ImportanceResult: only the attributes the plots read."""

    log_weights: torch.Tensor
    samples: dict
    khat: float = math.nan


def test_plots_take_any_weighted_draws(result):
    plain = PlainDraws(result.log_weights, dict(result.samples), result.khat)
    assert isinstance(plain, WeightedDraws) and isinstance(result, WeightedDraws)
    assert not isinstance(torch.zeros(3), WeightedDraws)
    texts = [" ".join(t.get_text() for t in plot_weights(r).axes[1].texts) for r in (plain, result)]
    assert texts[0] == texts[1] and "k-hat" in texts[0]
    shapes = []
    for r in (plain, result):  # the same resampled draws from the same seed
        pyro.set_rng_seed(7)
        fig = plot_marginals(r, sites=["mu", "theta"], max_components=2)
        shapes.append([[p.get_verts().tolist() for p in ax.patches] for ax in fig.axes])
    assert shapes[0] == shapes[1]
    rng = torch.Generator().manual_seed(0)
    toy = PlainDraws(torch.randn(300, generator=rng), {"x": torch.randn(300, 2, generator=rng)})
    fig = plot_marginals(toy, reference={"x": np.zeros((10, 2))})
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes] == ["x[0]", "x[1]"]
    assert "not computed" in "".join(t.get_text() for t in plot_weights(toy).axes[1].texts)
