"""Pooling independent importance samplers (``pyro_snf.infer.pooling``): the pooled mean weight is the
inverse-variance combination of the estimates, unreliable samplers get no share, and the pooled draws
keep the sites every part holds."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_snf.infer.pooling import pool, reliable
from pyro_snf.infer.result import ImportanceResult


def _result(log_w: torch.Tensor, khat: float = 0.2, warns: tuple[str, ...] = (),
            extra: bool = False) -> ImportanceResult:
    samples = {"a": torch.randn(len(log_w))}
    if extra:
        samples["b"] = torch.randn(len(log_w), 2)
    res = ImportanceResult(log_weights=log_w, samples=samples, khat=khat)
    res.warnings = list(warns)
    return res


def _z(res: ImportanceResult) -> float:
    return float(torch.logsumexp(res.log_weights.double(), 0) - math.log(res.num_samples))


def _centred(log_w: torch.Tensor, log_z: float = -2.0) -> torch.Tensor:
    """``log_w`` shifted so that its log mean weight is ``log_z``: samplers of the same evidence."""
    return log_w - (torch.logsumexp(log_w, 0) - math.log(len(log_w))) + log_z


@pytest.fixture
def two_samplers():
    g = torch.Generator().manual_seed(0)
    guides = _result(_centred(0.3 * torch.randn(4000, generator=g, dtype=torch.float64)), warns=("g",),
                     extra=True)
    prior = _result(_centred(1.5 * torch.randn(6000, generator=g, dtype=torch.float64)))
    return guides, prior


def test_pooled_mean_weight_is_the_inverse_variance_combination(two_samplers):
    guides, prior = two_samplers
    out = pool([guides], prior, min_gain=0.0)
    zs = [math.exp(_z(r)) for r in (guides, prior)]
    var = [math.exp(2 * r.log_evidence) * r.log_evidence_stderr ** 2 for r in (guides, prior)]
    lam = (1 / var[0]) / (1 / var[0] + 1 / var[1])
    assert 0 < lam < 1
    assert math.exp(_z(out)) == pytest.approx(lam * zs[0] + (1 - lam) * zs[1], rel=1e-10)
    assert out.num_samples == 10_000 and set(out.samples) == {"a"}  # "b": the prior draws lack it
    assert out.warnings[0] == "g" and "pools" in out.warnings[-1]


def test_an_unreliable_sampler_gets_no_share(two_samplers):
    guides, prior = two_samplers
    guides.khat = 0.9
    assert not reliable(guides) and reliable(prior)
    out = pool([guides], prior)  # the prior's draws alone
    assert out.num_samples == 6000 and _z(out) == pytest.approx(_z(prior), abs=1e-10)
    assert out.ess == pytest.approx(prior.ess, rel=1e-9)


def test_nothing_reliable_or_a_negligible_gain_returns_the_guides(two_samplers):
    guides, prior = two_samplers
    assert pool([guides], None) is guides
    prior.khat = 1.2
    assert pool([guides], prior) is guides
    guides.khat, prior.khat = 0.9, 1.2
    assert pool([guides], prior) is guides
    guides.khat, prior.khat = 0.2, 0.2
    assert pool([guides], prior, min_gain=1.0) is guides  # any share counts as negligible


def test_two_guide_runs_and_the_prior():
    g = torch.Generator().manual_seed(1)
    draw = lambda scale: _centred(scale * torch.randn(3000, generator=g, dtype=torch.float64))  # noqa: E731
    runs = [_result(draw(1.0), khat=1.1, warns=("centred",)), _result(draw(0.2), warns=("non-centred",))]
    prior = _result(_centred(1.0 * torch.randn(3000, generator=g, dtype=torch.float64)))
    out = pool(runs, prior)
    assert out.warnings[:2] == ["centred", "non-centred"]
    assert "guides 1" in out.warnings[-1] and "guides 0" not in out.warnings[-1]
    assert out.num_samples == 6000  # the unreliable run left out


def test_a_sampler_far_below_another_gets_no_share(two_samplers):
    """Reliable-looking guides that miss mass (log Z 0.5 below the prior's, SEs 0.01-0.03) are dropped."""
    guides, prior = two_samplers
    lifted = _result(prior.log_weights + (guides.log_evidence - prior.log_evidence) + 0.5)
    assert reliable(guides) and reliable(lifted)
    out = pool([guides], lifted)
    assert out.num_samples == lifted.num_samples and _z(out) == pytest.approx(_z(lifted), abs=1e-10)
