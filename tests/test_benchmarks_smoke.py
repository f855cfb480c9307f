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
