"""AutoSNF save/load: ``torch.save(guide)``, Pyro's param store and ``state_dict`` give back the same
guide (same seed -> same draws and log evidence), and parameters saved by a differently configured
guide raise an error naming the difference instead of leaving the guide silently untrained."""

import contextlib
import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_snf.blocks import PulledBackBlock
from pyro_snf.infer import AutoSNF, importance_sample

F64 = torch.float64
_g = torch.Generator().manual_seed(1)
X = torch.randn(10, 2, generator=_g, dtype=F64)
ARGS = (X, X @ torch.tensor([0.5, -1.0], dtype=F64) + 0.5 * torch.randn(10, generator=_g, dtype=F64))


def regression(X, y):
    """w ~ N(0, I), y ~ N(X w, 0.5^2); module-level, so it pickles with the guide."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def train(guide, model=regression, steps=4):
    """SVI steps, inside ``guide.adapting()`` when its blocks adapt their step sizes; returns losses."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(4, vectorize_particles=True))
    with guide.adapting() if guide.blocks[0].adapt_step_size else contextlib.nullcontext():
        losses = [svi.step(*ARGS) for _ in range(steps)]
    assert all(torch.isfinite(torch.tensor(losses)))
    return losses


def fit(model=regression, steps=4, **options):
    guide = AutoSNF(model, init_scale=0.3, **options)
    train(guide, model, steps)
    return guide


def draws(guide, model=regression):
    """A guide draw and an importance log evidence, each from seed 7 (no state changes)."""
    pyro.set_rng_seed(7)
    with torch.no_grad():
        sample = guide(*ARGS)["w"]
    pyro.set_rng_seed(7)
    log_z = importance_sample(model, guide, *ARGS, num_samples=200, warn=False).log_evidence
    return sample, float(log_z)


def same(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1]


def values(guide):
    return {k: v.detach().clone() for k, v in guide.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("options", [
    dict(),
    dict(flow="coupling", hidden_dims=(8,)),
    dict(block="underdamped", block_kwargs={"learn_beta": True}, base="diagonal"),
])
def test_torch_save_load_gives_the_same_guide_and_it_keeps_training(tmp_path, options):
    guide = fit(**options)
    expected = draws(guide)
    torch.save(guide, tmp_path / "guide.pt")
    assert callable(guide.model) and same(draws(guide), expected)  # saving changed nothing
    pyro.clear_param_store()  # as in a new session
    loaded = torch.load(tmp_path / "guide.pt", weights_only=False)
    assert callable(loaded.model)  # a module-level model travels with the guide
    pulled_back = [t for t in loaded.layers if isinstance(t, PulledBackBlock)]  # one object graph:
    assert all(t.block is b for t, b in zip(pulled_back, loaded.blocks, strict=True))
    assert pulled_back[0]._transforms[-1] is loaded.layers[-1] is loaded.chain[-1]
    assert same(draws(loaded), expected)
    assert [float(b.step_size) for b in loaded.blocks] == [float(b.step_size) for b in guide.blocks]
    loc = loaded.layers[-1].loc.detach().clone()
    train(loaded, steps=3)  # training goes on: Adam moves the loaded parameters
    assert not torch.equal(loaded.layers[-1].loc, loc)
    assert pyro.get_param_store()["AutoSNF.chain$$$config"] is not None


def test_a_guide_with_a_local_model_saves_and_then_asks_for_set_model(tmp_path):
    def local_model(X, y):
        regression(X, y)

    guide = fit(local_model)
    expected = draws(guide, local_model)
    torch.save(guide, tmp_path / "guide.pt")  # the model does not pickle: saved without it
    assert callable(guide.model)  # the live guide keeps it
    pyro.clear_param_store()
    loaded = torch.load(tmp_path / "guide.pt", weights_only=False)
    with pytest.raises(RuntimeError, match=r"without its model .* call guide\.set_model\(model\)"):
        loaded(*ARGS)
    loaded.set_model(local_model)
    assert same(draws(loaded, local_model), expected)


@pytest.mark.parametrize("saved, other, message", [
    (dict(num_blocks=2), dict(num_blocks=4), r"num_blocks 2 \(saved\) vs 4 \(this guide\)"),
    (dict(), dict(flow="coupling"), r"flow none \(saved\) vs coupling \(this guide\)"),
    (dict(), dict(base="diagonal"), r"base full \(saved\) vs diagonal \(this guide\)"),
    (dict(), dict(block="metropolis"), r"blocks MALABlock,MALABlock \(saved\) vs MetropolisBlock"),
    (dict(betas=[0.5, 1.0]), dict(betas=[0.25, 1.0]), r"betas 0\.5,1 \(saved\) vs 0\.25,1 \(this guide\)"),
])
def test_param_store_of_a_differently_configured_guide_raises(tmp_path, saved, other, message):
    fit(steps=1, **saved)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    guide = AutoSNF(regression, init_scale=0.3, **other)
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.raises(ValueError, match="written by a differently configured guide: .*" + message):
        guide(*ARGS)


def test_param_store_without_a_fingerprint_is_checked_by_names(tmp_path):
    """A store without the fingerprint (or with it deleted): the parameter names still tell."""
    fit(steps=1, num_blocks=4)
    store = pyro.get_param_store()
    del store["AutoSNF.chain$$$config"]
    store.save(tmp_path / "params.pt")
    pyro.clear_param_store()
    guide = AutoSNF(regression, init_scale=0.3, num_blocks=2)
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.raises(ValueError) as error:
        guide(*ARGS)
    assert ("parameters this guide does not have: ['4.loc', '4.log_scale', '4.tril']; adapted step sizes "
            "of blocks ['2', '3'], which this guide lacks or does not adapt; parameters of this guide "
            "missing from the store: ['2.loc', '2.log_scale', '2.tril']") in str(error.value)


def test_state_dict_round_trip_needs_setup_first():
    guide = fit(flow="coupling", hidden_dims=(8,))
    expected, buffer = draws(guide), io.BytesIO()
    torch.save(guide.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # the fingerprint is plain strings
    assert state["_extra_state"]["flow"] == "coupling"
    pyro.clear_param_store()
    fresh = AutoSNF(regression, init_scale=0.3, flow="coupling", hidden_dims=(8,))
    with pytest.raises(RuntimeError, match=r"no layers yet .* call guide\.setup\(\*args, \*\*kwargs\)"):
        fresh.load_state_dict(state)
    fresh.setup(*ARGS)
    fresh.load_state_dict(state)
    assert same(draws(fresh), expected)


@pytest.mark.parametrize("other, message", [
    (dict(num_blocks=4), r"num_blocks 2 \(saved\) vs 4 \(this guide\)"),
    (dict(flow="coupling"), r"flow none \(saved\) vs coupling \(this guide\)"),
    (dict(block="metropolis"), r"blocks MALABlock,MALABlock \(saved\) vs MetropolisBlock"),
])
def test_state_dict_of_a_differently_configured_guide_raises_before_copying(other, message):
    state = fit(steps=1).state_dict()
    pyro.clear_param_store()
    guide = AutoSNF(regression, init_scale=0.3, **other)
    guide.setup(*ARGS)
    before = values(guide)
    with pytest.raises(ValueError, match="differently configured guide: .*" + message):
        guide.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in values(guide).items())  # nothing copied
    del state["_extra_state"]  # without the fingerprint torch's strict key check still refuses
    if "block" not in other:  # (same keys for another block type: only the fingerprint tells)
        with pytest.raises(RuntimeError, match="Unexpected key"):
            guide.load_state_dict(state)
