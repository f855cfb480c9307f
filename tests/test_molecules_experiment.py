"""The alanine-dipeptide experiment: metrics (known cases, weights, periodic bins), the shipped MD data,
the boxed target, and the benchmark's smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pyro_snf.molecules.metrics import (
    block_standard_error,
    free_energy_2d,
    kl_paper,
    periodic_smooth,
    surface_rmse,
    torsion_histogram,
    torsion_kl,
    weight_summary,
    weighted_fraction,
)


def test_kl_of_identical_samples_is_zero_and_positive_otherwise():
    rng = np.random.default_rng(0)
    a = rng.vonmises(0.5, 2.0, 20_000)
    assert torsion_kl(a, a) == {"paper": 0.0, "normalised": 0.0}
    b = rng.vonmises(-1.0, 2.0, 20_000)
    kl = torsion_kl(a, b)
    assert kl["paper"] > 1.0 and kl["normalised"] > 0.05


def test_kl_known_case_and_paper_scale():
    # two uniform halves of the circle: p = 2/(2 pi) on [0, pi), q uniform: KL = log 2 (up to smoothing at
    # the two edges), and the paper's unnormalised sum is 2.5 * 50 / (2 pi) times the normalised one
    grid = np.linspace(-math.pi, math.pi, 200_001)[:-1] + math.pi / 200_000
    half = grid[grid >= 0]
    kl = torsion_kl(half, grid)
    p = periodic_smooth(np.r_[np.zeros(25), np.ones(25)])
    p /= p.sum()
    assert kl["normalised"] == pytest.approx(float(np.sum(p * np.log((p + 1e-5) / (0.02 + 1e-5)))), rel=1e-3)
    h_half, h_all = torsion_histogram(half, smooth=False), torsion_histogram(grid, smooth=False)
    exact = kl_paper(h_half / h_half.sum(), h_all / h_all.sum(), eps=1e-12)
    assert exact == pytest.approx(math.log(2), rel=1e-3)
    assert kl["paper"] / kl["normalised"] == pytest.approx(2.5 * 50 / (2 * math.pi), rel=0.02)
    h = np.array([1.0, 2.0, 3.0])
    assert kl_paper(h, h) == 0.0
    assert kl_paper(np.array([1.0, 0.0]), np.array([0.5, 0.5]), eps=0.0) == pytest.approx(math.log(2))


def test_periodic_bins_wrap_around():
    h = np.zeros(50)
    h[0] = 1.0
    s = periodic_smooth(h)
    assert s.sum() == pytest.approx(2.5)
    assert s[-1] == s[1] == 0.5 and s[-2] == s[2] == 0.25 and s[0] == 1.0
    # samples just below +pi and just above -pi sit in neighbouring (first/last) bins
    up, down = np.full(1000, math.pi - 1e-3), np.full(1000, -math.pi + 1e-3)
    hu, hd = torsion_histogram(up), torsion_histogram(down)
    assert hu.argmax() == 49 and hd.argmax() == 0 and hu[0] > 0 and hd[49] > 0
    # angles outside (-pi, pi] are wrapped
    np.testing.assert_allclose(torsion_histogram(up + 2 * math.pi), hu)
    f = free_energy_2d(np.full(10, 3.5), np.full(10, -3.5), bins=4)
    assert np.isfinite(f).sum() == 1 and np.isfinite(f[0, 3])


def test_weights_are_used():
    rng = np.random.default_rng(1)
    a = rng.uniform(-math.pi, math.pi, 4000)
    b = np.concatenate([a, np.full(4000, 1.0)])
    lw = np.concatenate([np.zeros(4000), np.full(4000, -np.inf)])
    assert torsion_kl(a, b, log_weights=lw)["paper"] == 0.0
    assert torsion_kl(a, b)["paper"] > 1.0
    p, se = weighted_fraction(b > 0, lw)
    assert p == pytest.approx(np.mean(a > 0)) and se == pytest.approx(np.sqrt(p * (1 - p) / 4000), rel=1e-6)
    with pytest.raises(ValueError, match="one entry per sample"):
        torsion_kl(a, b, log_weights=lw[:10])
    with pytest.raises(ValueError, match="no sample carries weight"):
        weighted_fraction(b > 0, np.full(8000, -np.inf))


def test_surface_rmse_ignores_the_constant_and_counts_empty_bins():
    rng = np.random.default_rng(2)
    phi, psi = rng.vonmises(-1.5, 1.0, 50_000), rng.vonmises(1.5, 1.0, 50_000)
    f = free_energy_2d(phi, psi, bins=10)
    assert surface_rmse(f + 3.0, f)["rmse"] == pytest.approx(0.0, abs=1e-12)
    g = f.copy()
    use = np.exp(-f) >= 0.01
    g[np.argwhere(use)[0][0], np.argwhere(use)[0][1]] = np.inf
    out = surface_rmse(g, f)
    assert out["num_empty"] == 1 and out["num_bins"] == int(use.sum()) and out["rmse"] < 1e-12


def test_block_standard_error_and_weight_summary():
    x = np.repeat([0.0, 1.0], 500)  # two long blocks: the block SE sees the correlation
    mean, se = block_standard_error(x, 10)
    assert mean == 0.5 and se == pytest.approx(np.std([0] * 5 + [1] * 5, ddof=1) / np.sqrt(10))
    s = weight_summary(np.array([0.0, 0.0, math.log(2.0), -np.inf]))
    assert s["ess"] == pytest.approx(16 / 6) and s["log_Z"] == pytest.approx(0.0)
    assert math.isnan(s["khat"])  # too few weights for a Pareto fit: unknown, not a number that looks fine
    rng = np.random.default_rng(3)
    light, heavy = rng.normal(0, 0.3, 5000), rng.standard_cauchy(5000)
    assert weight_summary(light)["khat"] < 0.5
    assert weight_summary(np.log(np.abs(heavy)))["khat"] > 0.7  # |Cauchy| weights: tail index 1


def test_shipped_md_data():
    from pyro_snf.molecules.ala2_data import ALA2_TORSION_NAMES, load_ala2_reference, load_ala2_training

    x, ref = load_ala2_training(), load_ala2_reference()
    assert x.shape == (10_000, 66) and x.dtype == np.float32
    assert ref["torsions"].shape == (50_000, 7) and ref["energy"].shape == (50_000,)
    phi = ref["torsions"][:, ALA2_TORSION_NAMES.index("phi")]
    assert 0.08 < np.mean(phi > 0) < 0.13 and np.isfinite(ref["energy"]).all()
    # the training set is near equilibrium in every torsion (cis/trans included): an exact sampler, the
    # independent reference standing in for one, scores far below the paper's SNF in their KL against it
    from pyro_snf.molecules.ala2_data import ala2_torsions

    train = ala2_torsions(x)
    for i, name in enumerate(ALA2_TORSION_NAMES):
        assert torsion_kl(train[:, i], ref["torsions"][:, i])["paper"] < 0.06, name


@pytest.fixture(scope="module")
def ala2_setup():
    pytest.importorskip("openmmtools")
    from pyro_snf.molecules import alanine_dipeptide
    from pyro_snf.molecules.ala2_data import ALA2_TORSION_NAMES, ala2_torsions, load_ala2_training
    from pyro_snf.molecules.experiment import ala2_target

    system, _, _ = alanine_dipeptide()
    frames = load_ala2_training()[:2000]
    phi = ala2_torsions(frames[:1000])[:, ALA2_TORSION_NAMES.index("phi")]
    assert np.mean(phi > 0) >= 0.0  # torsions of the stored positions compute
    target, z = ala2_target(system, frames)
    return system, target, z


def test_torsion_box_target(ala2_setup):
    _, target, z = ala2_setup
    u = target(z[:50])
    assert torch.isfinite(u).all()
    outside = z[:50].clone()
    outside[:, target.transform.torsion_slice.start] += 2 * math.pi
    assert torch.isinf(target(outside)).all()
    # the box is where the inverse transform puts configurations: same positions, same inner energy
    torch.testing.assert_close(target.transform(outside), target.transform(z[:50]), atol=1e-4, rtol=0)


def test_models_and_evaluation(ala2_setup):
    from pyro_snf.molecules.ala2_data import load_ala2_reference
    from pyro_snf.molecules.experiment import (
        copy_flow_parameters,
        evaluate_ala2,
        paper_ala2_model,
        sample_with_weights,
    )

    _, target, _ = ala2_setup
    torch.manual_seed(0)
    rnvp = paper_ala2_model(target, "rnvp", hidden_dims=(8,))
    snf = paper_ala2_model(target, "snf_mala", hidden_dims=(8,), num_steps=1)
    assert [round(float(b.beta), 2) for b in snf.blocks] == [0.0, 0.25, 0.5, 0.75, 1.0]
    copy_flow_parameters(rnvp, snf)
    flows = [[t for t in m.layers if isinstance(t, torch.nn.Module) and not hasattr(t, "transition")]
             for m in (rnvp, snf)]
    assert len(flows[0]) == len(flows[1]) == 10
    for a, b in zip(*flows):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match="same bijections"):
        copy_flow_parameters(rnvp, paper_ala2_model(target, "rnvp", hidden_dims=(8,), num_stages=2))
    with pytest.raises(ValueError, match="variant"):
        paper_ala2_model(target, "nvp")
    out = sample_with_weights(snf, 64, chunk=32)
    with pytest.warns(RuntimeWarning, match="k-hat .* > 0.7"):  # an untrained SNF's weights
        metrics = evaluate_ala2(out, load_ala2_reference(), bins=10)
    assert metrics["weights"]["khat"] > 0.7 and not metrics["reweighting_reliable"]
    assert set(metrics["kl"]) == {"phi_nb", "gamma1", "psi_nb", "gamma2", "gamma3", "phi", "psi"}
    assert metrics["num_samples"] == 64 and 0 <= metrics["fraction_zero_weight"] <= 1


def test_circular_models_keep_torsions_in_the_box(ala2_setup):
    from pyro_snf.molecules.experiment import paper_ala2_model, sample_with_weights, wide_torsions

    _, target, z = ala2_setup
    torsions = target.transform.torsion_slice
    wide = wide_torsions(target, z)
    assert not wide[:torsions.start].any() and 4 <= int(wide.sum()) <= 10
    torch.manual_seed(0)
    for periodic in (None, wide):  # every torsion an angle, or the wide ones
        for variant in ("circular", "snf_mc_circular", "snf_mc_pulled_circular"):
            model = paper_ala2_model(target, variant, hidden_dims=(8,), num_steps=2, periodic=periodic)
            out = sample_with_weights(model, 64, chunk=32)
            mask = torch.zeros(target.dim, dtype=torch.bool) if periodic is None else periodic
            if periodic is None:
                mask[torsions] = True
                assert np.isfinite(out["log_weights"]).all()  # no draw outside the box: none weighs 0
            assert (np.abs(out["z"][:, mask.numpy()]) <= math.pi).all()
    # pulled-back blocks: one before each stage, on the target seen through that stage and all later ones
    # (the SNF's own layers, so that training or copying parameters reaches the blocks' energies)
    from pyro_snf.blocks import PulledBackBlock

    model = paper_ala2_model(target, "snf_mc_pulled_circular", hidden_dims=(8,), num_stages=3, num_steps=1)
    blocks = [i for i, layer in enumerate(model.layers) if isinstance(layer, PulledBackBlock)]
    assert blocks == [0, 3, 6] and all(model.layers[i].jacobian for i in blocks)
    for i in blocks:
        later = [t for t in model.layers[i + 1:] if not isinstance(t, PulledBackBlock)]
        assert all(a is b for a, b in zip(model.layers[i]._transforms, later, strict=True))
    bad = torch.zeros(target.dim, dtype=torch.bool)
    bad[0] = True
    with pytest.raises(ValueError, match="torsion coordinates only"):
        paper_ala2_model(target, "circular", periodic=bad)


def test_benchmark_smoke(tmp_path):
    pytest.importorskip("openmmtools")
    pytest.importorskip("matplotlib")
    from benchmarks.ala2 import main
    from pyro_snf.molecules.experiment import VARIANTS

    main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "ala2_smoke.json").read_text())
    assert set(results["runs"]) == set(VARIANTS)
    assert (tmp_path / "ala2_smoke_ramachandran.png").stat().st_size > 10_000
    assert "their definition" in (tmp_path / "ala2_smoke.md").read_text()
    assert results["augmentation"]["pool"] == 2 * 8000  # 8,000 frames fitted, one snapshot each
    for key in ("circular", "snf_mc_circular", "snf_mala_circular"):
        assert all(r["fraction_zero_weight"] < 0.2 for r in results["runs"][key])
