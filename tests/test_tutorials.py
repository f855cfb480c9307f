"""The tutorial notebooks: committed executed and clean, linked from the README, and they run.

Execution uses the notebooks' smoke-test switch (``CI`` in the environment shrinks their budgets),
through ``tutorials/execute.py``, the script that also regenerates their committed outputs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = ["01_snf_basics", "02_multimodal_2d", "03_snf_as_pyro_guide", "04_model_comparison", "05_vae",
             "06_alanine_dipeptide"]
NEEDS_MOLECULES = {"06_alanine_dipeptide"}  # openmm / openmmtools (extra [molecules])
SMOKE_SWITCH = 'smoke_test = "CI" in os.environ'
# absolute paths of a machine (outputs are scrubbed to relative ones by tutorials/execute.py)
ABSOLUTE_PATH = re.compile(r"(?<![\w<.])/(home|tmp|work|root|Users|usr|opt|var)/")


def _executor():
    spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)


def test_the_notebooks_are_the_listed_ones_and_readme_links_each():
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == NOTEBOOKS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        assert f"tutorials/{name}.ipynb" in readme, f"README.md does not link {name}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_executed_in_order_with_figures_and_no_noise(name):
    nb = _read(name)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert any(SMOKE_SWITCH in cell.source for cell in code), "missing the smoke-test switch"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        "not executed top to bottom in one kernel (run tutorials/execute.py)"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 2, "figures missing"
    streams = [out for out in outputs if out.output_type == "stream"]
    assert not [out.text for out in streams if out.name == "stderr"], "warnings or progress bars in outputs"
    for out in streams:
        assert len(out.text.splitlines()) <= 60, "a stream output of more than 60 lines"
    texts = [out.text for out in streams] + [out.get("data", {}).get("text/plain", "") for out in outputs]
    for text in texts:
        assert not ABSOLUTE_PATH.search(text), f"absolute path in an output: {text[:200]!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_smoke_budgets(name):
    """Executes the notebook top to bottom in a fresh kernel with CI budgets; any error fails."""
    if name in NEEDS_MOLECULES:
        pytest.importorskip("openmmtools", reason="needs the [molecules] extra")
    nb = _executor().execute(TUTORIALS / f"{name}.ipynb", smoke=True, timeout=600)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
