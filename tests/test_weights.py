"""ImportanceWeights and sanitize_log_weights: known cases, calibration of the standard error,
resampling, zero and invalid weights."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_snf import ImportanceWeights, sanitize_log_weights
from pyro_snf.weights import log_mean_exp

INF = float("inf")


def test_equal_weights(dtype):
    iw = ImportanceWeights(torch.full((1000,), 2.5, dtype=dtype))
    assert float(iw.ess) == pytest.approx(1000.0, rel=1e-5)
    assert float(iw.ess_fraction) == pytest.approx(1.0, rel=1e-5)
    assert float(iw.log_evidence) == pytest.approx(2.5, abs=1e-5)
    assert float(iw.log_evidence_stderr) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(iw.normalized_weights, torch.full((1000,), 1e-3, dtype=dtype))
    assert iw.num_zero == 0 and iw.num_samples == 1000
    assert iw.ess.dtype == dtype and iw.log_evidence.dtype == dtype


def test_one_nonzero_weight():
    lw = torch.full((50,), -INF)
    lw[17] = 3.0
    iw = ImportanceWeights(lw)
    assert float(iw.ess) == pytest.approx(1.0)
    assert iw.num_zero == 49
    assert float(iw.log_evidence) == pytest.approx(3.0 - math.log(50), abs=1e-6)
    assert torch.equal(iw.resample(20), torch.full((20,), 17))
    assert torch.equal(iw.resample(20, method="multinomial"), torch.full((20,), 17))


def test_known_small_case():
    w = np.array([1.0, 2.0, 3.0, 4.0])
    iw = ImportanceWeights(torch.tensor(np.log(w) + 1e4, dtype=torch.float64))  # huge offset: stable
    assert float(iw.log_evidence) == pytest.approx(math.log(2.5) + 1e4, rel=0, abs=1e-9)
    assert float(iw.ess) == pytest.approx(100.0 / 30.0, rel=1e-12)
    assert float(iw.log_evidence_stderr) == pytest.approx(math.sqrt(w.var(ddof=1) / (4 * 2.5**2)), rel=1e-12)
    assert torch.allclose(iw.normalized_weights, torch.tensor(w / 10.0, dtype=torch.float64))
    summary = iw.summary()
    assert summary["ess"] == pytest.approx(10 / 3) and summary["num_samples"] == 4
    assert summary["num_zero_weight"] == 0
    assert set(summary) == {"log_evidence", "log_evidence_stderr", "ess", "ess_fraction", "num_samples",
                            "num_zero_weight"}


def test_stderr_matches_direct_computation_and_is_shift_invariant():
    lw = torch.randn(5000, dtype=torch.float64) * 1.5
    w = lw.exp().numpy()
    direct = math.sqrt(w.var(ddof=1) / (len(w) * w.mean() ** 2))
    iw = ImportanceWeights(lw)
    assert float(iw.log_evidence_stderr) == pytest.approx(direct, rel=1e-10)
    shifted = ImportanceWeights(lw + 700.0)  # exp would overflow without the max shift
    assert float(shifted.log_evidence_stderr) == pytest.approx(direct, rel=1e-10)
    assert float(shifted.ess) == pytest.approx(float(iw.ess), rel=1e-10)
    assert float(shifted.log_evidence) == pytest.approx(float(iw.log_evidence) + 700.0, rel=1e-12)


def test_zero_weights_are_counted_and_ignored():
    lw = torch.tensor([0.0, -INF, math.log(3.0), -INF])
    iw = ImportanceWeights(lw)
    assert iw.num_zero == 2
    assert float(iw.log_evidence) == pytest.approx(math.log(4.0 / 4.0), abs=1e-6)
    assert float(iw.ess) == pytest.approx(16.0 / 10.0, rel=1e-6)
    assert torch.allclose(iw.normalized_weights, torch.tensor([0.25, 0.0, 0.75, 0.0]))


def test_all_zero_weights():
    iw = ImportanceWeights(torch.full((10,), -INF))
    assert float(iw.log_evidence) == -INF
    assert float(iw.log_evidence_stderr) == INF
    assert float(iw.ess) == 0.0
    with pytest.raises(ValueError, match="every importance weight is zero"):
        iw.resample()
    assert float(log_mean_exp(torch.full((3,), -INF))) == -INF


def test_single_sample_stderr_is_infinite():
    assert float(ImportanceWeights(torch.tensor([0.3])).log_evidence_stderr) == INF


@pytest.mark.parametrize("bad", [float("nan"), INF])
def test_nan_and_plus_inf_rejected(bad):
    with pytest.raises(ValueError, match="sanitize_log_weights"):
        ImportanceWeights(torch.tensor([0.0, bad, 1.0]))


@pytest.mark.parametrize("shape", [(), (0,), (3, 4)])
def test_bad_shapes_rejected(shape):
    with pytest.raises(ValueError, match="1-d"):
        ImportanceWeights(torch.zeros(shape))


def test_sanitize_log_weights_warns_with_count():
    lw = torch.tensor([0.0, float("nan"), INF, -INF, 1.0])
    with pytest.warns(RuntimeWarning, match="3 of 5"):
        clean = sanitize_log_weights(lw)
    assert torch.equal(clean, torch.tensor([0.0, -INF, -INF, -INF, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(sanitize_log_weights(lw, warn=False), clean)
        finite = torch.randn(10)
        assert torch.equal(sanitize_log_weights(finite), finite)  # no warning for clean weights


# -- resampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_out", [None, 1000, 37])
def test_systematic_resampling_counts(n_out):
    """Systematic resampling gives every particle floor(n p_i) or ceil(n p_i) copies."""
    lw = torch.randn(200, dtype=torch.float64) * 2
    lw[::7] = -INF
    iw = ImportanceWeights(lw)
    for _ in range(20):
        idx = iw.resample(n_out)
        m = 200 if n_out is None else n_out
        assert idx.shape == (m,) and idx.dtype == torch.long
        counts = torch.bincount(idx, minlength=200).double()
        expected = m * iw.normalized_weights
        assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
        assert counts[::7].sum() == 0


def test_multinomial_resampling_counts():
    p = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    iw = ImportanceWeights(p.log())
    n = 100_000
    idx = iw.resample(n, method="multinomial")
    counts = torch.bincount(idx, minlength=5).numpy()
    assert counts[4] == 0
    chi2 = stats.chisquare(counts[:4], n * p[:4].numpy())
    assert chi2.pvalue > 1e-3


def test_resampling_with_generator_is_reproducible():
    iw = ImportanceWeights(torch.randn(100))
    for method in ("systematic", "multinomial"):
        a = iw.resample(50, method=method, generator=torch.Generator().manual_seed(1))
        b = iw.resample(50, method=method, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_systematic_resampling_is_exact_for_float32_weights():
    """One weight of 0.3 and 99997 tiny ones in float32: a float32 cumulative sum ends about 1.5e-4
    short of one. That shortfall must not go to the last particle (whose weight is zero), and the
    counts must still be floor or ceil of n p_i."""
    n = 100_000
    p = torch.full((n,), 0.7 / (n - 3), dtype=torch.float64)
    p[0], p[1], p[-1] = 0.0, 0.3, 0.0
    iw = ImportanceWeights(p.log().float())
    w = iw.normalized_weights.double()
    expected = n * w / w.sum()  # float32 softmax weights sum to one only up to ~1e-4 here
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        idx = iw.resample(generator=g)
        counts = torch.bincount(idx, minlength=n).double()
        assert counts[0] == 0 and counts[-1] == 0
        assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()


def test_resample_argument_errors():
    iw = ImportanceWeights(torch.zeros(5))
    with pytest.raises(ValueError, match="method"):
        iw.resample(method="stratified-ish")
    with pytest.raises(ValueError, match="positive"):
        iw.resample(0)


# -- calibration on a real importance sampler ------------------------------------------------------


def gaussian_is(n: int, s: float, generator: torch.Generator) -> torch.Tensor:
    """Log-weights of N(0, s^2) proposals against exp(-x^2/2) (Z = sqrt(2 pi))."""
    x = s * torch.randn(n, dtype=torch.float64, generator=generator)
    log_q = -0.5 * (x / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
    return -0.5 * x**2 - log_q


def test_log_evidence_and_ess_on_gaussian_importance_sampling():
    s, n = 2.0, 200_000
    lw = gaussian_is(n, s, torch.Generator().manual_seed(3))
    iw = ImportanceWeights(lw)
    log_Z = 0.5 * math.log(2 * math.pi)
    assert abs(float(iw.log_evidence) - log_Z) < 4 * float(iw.log_evidence_stderr)
    # Kish ESS fraction -> Z^2 / E_q[w^2] = sqrt(2 - 1/s^2) / s; SE by the delta method
    exact = math.sqrt(2 - 1 / s**2) / s
    w = (lw - lw.max()).exp()
    m1, m2 = w.mean(), (w * w).mean()
    grad = torch.stack([2 * m1 / m2, -m1 * m1 / (m2 * m2)])
    cov = torch.cov(torch.stack([w, w * w])) / n
    se = float((grad @ cov @ grad).sqrt())
    assert abs(float(iw.ess_fraction) - exact) < 4 * se


def test_log_evidence_stderr_is_calibrated():
    """Across R independent estimates, the spread of log Z-hat matches the reported SE."""
    g = torch.Generator().manual_seed(4)
    R, n = 400, 2000
    est, se = [], []
    for _ in range(R):
        iw = ImportanceWeights(gaussian_is(n, 1.6, g))
        est.append(float(iw.log_evidence))
        se.append(float(iw.log_evidence_stderr))
    spread, typical = float(np.std(est, ddof=1)), float(np.sqrt(np.mean(np.square(se))))
    # the relative SE of a standard deviation from R draws is about 1 / sqrt(2 R) = 3.5%
    assert abs(spread / typical - 1) < 4 / math.sqrt(2 * R)
    # and the estimates are centred on log Z (t-test on the mean of R estimates, bias O(1/n) << SE)
    log_Z = 0.5 * math.log(2 * math.pi)
    assert abs(np.mean(est) - log_Z) < 4 * spread / math.sqrt(R)
