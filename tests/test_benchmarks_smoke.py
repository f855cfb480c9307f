"""Smoke test of the benchmark suite: ``python -m benchmarks --suite quick`` runs end to end (tiny
budgets, into a temporary folder) and reports one row per method and target, with figures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENERGY_TARGETS = ["double_well", "gmm40", "many_well_8", "funnel_10"]
ENERGY_METHODS = ["pyro_snf SNF", "same flow, no blocks", "AIS (blocks, no flow)",
                  "normflows SNF (same arch.)", "Pyro NUTS (1 chain)"]
PYRO_TARGETS = ["ionosphere", "sonar", "german", "eight_schools"]
PYRO_METHODS = ["AutoSNF", "Pyro AutoIAFNormal", "Pyro AutoMultivariateNormal", "Pyro NUTS (1 chain)"]


def test_quick_suite_writes_a_row_per_method_and_target(tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "RESULTS.md").read_text()
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    expected = {t: ENERGY_METHODS for t in ENERGY_TARGETS} | {t: PYRO_METHODS for t in PYRO_TARGETS}
    for target, methods in expected.items():
        assert set(metrics[target]) == set(methods), (target, sorted(metrics[target]))
        for name in (f"{target}_samples.png", f"{target}_ess.png"):
            png = tmp_path / name
            assert png.exists() and 0 < png.stat().st_size < 300_000, name
    sections = report.split("\n### ")[1:]
    assert len(sections) == len(expected)
    for section in sections:
        rows = [line for line in section.splitlines()
                if line.startswith("| ") and not line.startswith("| method")]
        assert len(rows) in (len(ENERGY_METHODS), len(PYRO_METHODS)), section[:300]
        for line in rows:  # every row is ok or says why not; nothing failed
            status = line.split(" | ")[1]
            assert status == "ok" or status.startswith("skipped:"), line
    for heading in ("Command: `python -m benchmarks --suite quick", "Machine:", "Seeds:", "## Goals"):
        assert heading in report
    print(f"quick suite: {seconds:.1f} s")  # the budget is < 60 s on an idle 2-core machine


def test_vae_benchmark_small_variant_writes_every_encoder_and_bar(tmp_path: Path) -> None:
    """``python -m benchmarks.vae`` on the shipped 8x8 digits (no extra needed), tiny budgets: every
    encoder's per-image log-likelihoods, the paired differences, the interleaved timing and the bars."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.vae", "--source", "mnist8x8", "--num-train", "100", "--num-test",
           "20", "--epochs", "1", "--k", "20", "--k-snf", "20", "--latent", "4", "--hidden", "32", "--seeds",
           "0", "1", "--timing-rounds", "1", "--encoders", "gaussian", "iaf", "snf", "snf-flow",
           "--json", str(tmp_path / "vae.json"),
           "--md", str(tmp_path / "vae.md")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "vae.json").read_text())
    assert sorted((r["encoder"], r["seed"]) for r in out["runs"]) == sorted(
        (k, s) for k in ("gaussian", "iaf", "snf", "snf-flow") for s in (0, 1))
    assert all(len(r["ll"]) == len(r["elbo"]) == 20 for r in out["runs"])
    assert len(out["bars"]) == 2 * 3 + 1 and len(out["timing"]["epoch_s"]) == 4
    report = (tmp_path / "vae.md").read_text()
    for text in ("snf - iaf", "snf - snf-flow", "gap (log-lik. - ELBO)", "Interleaved timing",
                 "| bar | seed | measured |"):
        assert text in report
    print(f"VAE benchmark, small variant: {seconds:.1f} s")  # about 15 s on an idle machine
