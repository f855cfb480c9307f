"""Training: a short run improves the sampler; bad arguments; non-finite steps and particles."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch

from pyro_snf import ImportanceWeights, LangevinBlock, MetropolisBlock, StochasticNormalizingFlow
from pyro_snf.architectures import make_snf
from pyro_snf.targets import DoubleWell
from pyro_snf.train import TrainHistory, fit, kl_loss, ml_loss


def small_double_well_snf():
    return make_snf(DoubleWell(), block="metropolis", hidden_dims=(16,), num_stages=2, num_couplings=2,
                    block_kwargs={"step_size": 0.25, "num_steps": 2})


@pytest.mark.slow
def test_maximum_likelihood_training_raises_ess_on_double_well():
    """80 ML steps on exact samples: the ESS fraction goes from about 1% to about 30% (measured at
    this seed; asserted with wide margins), and log Z stays consistent with the exact value."""
    target = DoubleWell()
    snf = small_double_well_snf()
    data = target.sample(5000)
    _, before = snf.importance_weights(5000)
    history = fit(snf, num_iterations=80, batch_size=64, lr=1e-2, kl_weight=0.0, ml_weight=1.0, data=data,
                  progress=False)
    _, after = snf.importance_weights(5000)
    ess0, ess1 = float(before.ess_fraction), float(after.ess_fraction)
    assert ess0 < 0.05 and ess1 > 0.15 and ess1 > 5 * ess0, (ess0, ess1)
    assert abs(float(after.log_evidence) - target.log_Z) < 4 * float(after.log_evidence_stderr)
    assert len(history.loss) == len(history.ml) == len(history.kl) == 80
    assert all(math.isnan(v) for v in history.kl) and all(math.isfinite(v) for v in history.ml)
    assert history.loss == history.ml
    assert sum(history.loss[-10:]) < sum(history.loss[:10]) - 10 * 1.0  # mean drop of more than 1 nat
    assert history.num_skipped_steps == 0


def test_mixed_training_records_both_terms_and_continues_history():
    target = DoubleWell()
    snf = small_double_well_snf()
    data = target.sample(500)
    opt = torch.optim.Adam(snf.parameters(), lr=1e-3)
    history = fit(snf, num_iterations=3, batch_size=16, kl_weight=0.5, ml_weight=0.5, data=data,
                  optimizer=opt, progress=False)
    history = fit(snf, num_iterations=2, batch_size=16, kl_weight=1.0, ml_weight=0.0, optimizer=opt,
                  history=history, progress=False)
    assert isinstance(history, TrainHistory) and len(history.loss) == 5
    for loss, kl, ml in zip(history.loss[:3], history.kl[:3], history.ml[:3]):
        assert loss == pytest.approx(0.5 * kl + 0.5 * ml, rel=1e-5, abs=1e-5)
    assert all(math.isnan(v) for v in history.ml[3:]) and history.loss[3:] == history.kl[3:]
    assert opt.state  # the optimizer we passed was used


def test_loss_functions_match_their_definitions():
    target = DoubleWell()
    snf = small_double_well_snf()
    pyro.set_rng_seed(2)
    kl, bad = kl_loss(snf, 200)
    kl = kl.detach()
    pyro.set_rng_seed(2)
    x = snf.rsample((200,))
    assert float(kl) == pytest.approx(float((target(x) + snf.log_prob(x)).mean().detach()), rel=1e-5)
    assert int(bad) == 0
    # -J_KL is the path ELBO: below log Z (in expectation; here by a wide margin)
    assert -float(kl) < target.log_Z
    data = target.sample(200)
    pyro.set_rng_seed(3)
    ml, bad = ml_loss(snf, data)
    pyro.set_rng_seed(3)
    assert float(ml.detach()) == pytest.approx(float(snf.backward_path(data)[1].mean().detach()), rel=1e-5)
    assert int(bad) == 0


def test_fit_bad_arguments():
    snf = small_double_well_snf()
    data = DoubleWell().sample(10)
    with pytest.raises(ValueError, match="num_iterations and batch_size"):
        fit(snf, num_iterations=0, progress=False)
    with pytest.raises(ValueError, match="num_iterations and batch_size"):
        fit(snf, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="kl_weight, ml_weight"):
        fit(snf, kl_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="kl_weight, ml_weight"):
        fit(snf, kl_weight=0.0, ml_weight=0.0, data=data, progress=False)
    with pytest.raises(ValueError, match="data="):
        fit(snf, ml_weight=1.0, progress=False)
    no_params = StochasticNormalizingFlow(dist.Normal(torch.zeros(2), 1.0).to_event(1),
                                          [MetropolisBlock(0.5, 2)], DoubleWell())
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(no_params, num_iterations=1, progress=False)


class NanGradient(torch.autograd.Function):
    """Identity whose backward pass returns NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def nan_gradient_energy(x):
    return 0.5 * NanGradient.apply(x).pow(2).sum(-1)


def test_fit_skips_steps_with_nonfinite_gradient():
    snf = StochasticNormalizingFlow(dist.Normal(torch.zeros(2), 1.0).to_event(1),
                                    [T.affine_coupling(2, hidden_dims=[8])], nan_gradient_energy)
    before = [p.detach().clone() for p in snf.parameters()]
    history = fit(snf, num_iterations=4, batch_size=32, progress=False)
    assert history.num_skipped_steps == 4
    assert all(math.isfinite(v) for v in history.loss)  # the loss itself was fine
    for p, p0 in zip(snf.parameters(), before):
        assert torch.equal(p.detach(), p0)


def walled(x):
    u = 0.5 * x.pow(2).sum(-1)
    u = torch.where(x[..., 0] > 1.0, torch.full_like(u, float("inf")), u)
    return torch.where(x[..., 0] < -1.0, torch.full_like(u, float("nan")), u)


def test_fit_counts_nonfinite_particles_and_keeps_training():
    snf = StochasticNormalizingFlow(dist.Normal(torch.zeros(2), 0.5).to_event(1),
                                    [T.affine_coupling(2, hidden_dims=[8]), LangevinBlock(0.3, 3)], walled)
    before = [p.detach().clone() for p in snf.parameters()]
    history = fit(snf, num_iterations=5, batch_size=64, progress=False)
    assert history.num_nonfinite_particles > 0
    assert history.num_skipped_steps == 0 and all(math.isfinite(v) for v in history.loss)
    assert any(not torch.equal(p.detach(), p0) for p, p0 in zip(snf.parameters(), before))
    # importance weights of such a flow: zero weights are counted, never NaN
    with pytest.warns(RuntimeWarning):
        _, iw = snf.importance_weights(500)
    assert isinstance(iw, ImportanceWeights) and iw.num_zero > 0


@pytest.mark.parametrize("progress", [False, True])
def test_history_is_complete_across_bulk_readbacks(progress, capsys):
    """The per-step values are read back from the device in bulk (every 100 steps, at progress-bar
    updates and at the end): nothing is lost or duplicated, in order."""
    flow = StochasticNormalizingFlow(dist.Normal(torch.zeros(2), 1.0).to_event(1), [T.affine_coupling(2)],
                                     lambda x: 0.5 * (x - 1.0).pow(2).sum(-1))
    history = fit(flow, num_iterations=230, batch_size=8, kl_weight=1.0, progress=progress)
    assert len(history.loss) == len(history.kl) == len(history.ml) == 230
    assert history.loss == history.kl and all(math.isnan(v) for v in history.ml)
    assert history.num_nonfinite_particles == 0 and history.num_skipped_steps == 0
    more = fit(flow, num_iterations=7, batch_size=8, kl_weight=1.0, progress=False, history=history)
    assert more is history and len(history.loss) == 237


def test_old_names_still_work_with_a_deprecation_warning():
    """``fit(num_steps=)``, ``snf_layers(num_flow_blocks=)``, ``real_nvp_block``: same results as the new
    names (``num_iterations``, ``num_stages``, ``real_nvp_stage``), with a DeprecationWarning."""
    from pyro_snf.architectures import snf_layers
    from pyro_snf.transforms import real_nvp_block, real_nvp_stage, spline_coupling_block

    def losses(**kw):
        torch.manual_seed(0)
        snf = small_double_well_snf()
        return fit(snf, batch_size=16, kl_weight=1.0, progress=False, **kw).loss

    with pytest.warns(DeprecationWarning, match="num_iterations"):
        old = losses(num_steps=3)
    assert old == losses(num_iterations=3)
    with pytest.warns(DeprecationWarning, match="num_stages"):
        layers = snf_layers(2, num_flow_blocks=2, hidden_dims=(4,))
    assert [type(t) for t in layers] == [type(t) for t in snf_layers(2, num_stages=2, hidden_dims=(4,))]
    with pytest.warns(DeprecationWarning, match="real_nvp_stage"):
        old_stage = real_nvp_block(2, hidden_dims=(4,))
    assert [type(t) for t in old_stage] == [type(t) for t in real_nvp_stage(2, hidden_dims=(4,))]
    with pytest.warns(DeprecationWarning, match="spline_coupling_stage"):
        spline_coupling_block(2, num_couplings=1, hidden_dims=(4,))


def _overfitting_setup():
    """A 2-D flow with wide MLPs and 16 training points of a Gaussian: maximum likelihood overfits."""
    torch.manual_seed(0)
    snf = make_snf(lambda x: 0.5 * (x ** 2).sum(-1), 2, block=None, hidden_dims=(64, 64), num_stages=2)
    truth = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    return snf, truth.sample((16,)), truth.sample((2000,))


def test_early_stopping_restores_the_best_held_out_parameters():
    snf, train, held_out = _overfitting_setup()
    history = fit(snf, num_iterations=400, batch_size=16, data=train, kl_weight=0.0, ml_weight=1.0,
                  lr=1e-2, progress=False, validation_data=held_out, validate_every=25)
    iterations, values = zip(*history.validation)
    assert iterations == tuple(range(0, 401, 25)) and len(history.loss) == 400
    best = min(range(len(values)), key=values.__getitem__)
    assert history.best_iteration == iterations[best] < 400  # it did overfit: the last one is not the best
    assert values[-1] > values[best] + 0.05
    # the restored parameters are the best evaluation's (a plain flow's loss is deterministic)
    from pyro_snf.train import validation_loss

    assert validation_loss(snf, held_out) == pytest.approx(values[best], abs=1e-5)


def test_early_stopping_with_patience_stops_and_validates_its_arguments():
    snf, train, held_out = _overfitting_setup()
    history = fit(snf, num_iterations=2000, batch_size=16, data=train, kl_weight=0.0, ml_weight=1.0,
                  lr=1e-2, progress=False, validation_data=held_out, validate_every=25, patience=3)
    last = history.validation[-1][0]
    assert len(history.loss) == last < 2000 and last == history.best_iteration + 3 * 25
    with pytest.raises(ValueError, match="validate_every and patience"):
        fit(snf, num_iterations=2, data=train, kl_weight=0.0, ml_weight=1.0, progress=False,
            validation_data=held_out, patience=0)
