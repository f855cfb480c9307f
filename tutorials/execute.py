"""Execute the tutorial notebooks in place, the way they are committed (outputs and figures kept).

    python tutorials/execute.py                     # all notebooks, full budgets (a few minutes each)
    python tutorials/execute.py 01_snf_basics.ipynb # one notebook
    CI=true python tutorials/execute.py --no-write  # smoke budgets, check that they run

Each notebook reads ``smoke_test = "CI" in os.environ`` and shrinks its budgets under CI; the test
suite (``tests/test_tutorials.py``) executes them that way. Outputs are scrubbed of machine-specific
noise (absolute paths, execution timestamps) before they are written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Absolute paths that can leak into outputs (warnings name their source file).
_PATHS = [(str(ROOT) + os.sep, ""), (sys.prefix + os.sep, "<env>/")]
_SITE = re.compile(r"(/[^\s'\"]*)?/site-packages/")
_CELL = re.compile(r"/[^\s'\"]*/ipykernel_\d+/\d+\.py")


def scrub(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove absolute paths from outputs and per-run metadata from cells."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if "text" in out:
                text = _CELL.sub("<cell>", _SITE.sub("<site-packages>/", out["text"]))
                for old, new in _PATHS:
                    text = text.replace(old, new)
                out["text"] = text
    return nb


def execute(path: Path, *, smoke: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run ``path`` top to bottom in a fresh kernel (cwd = its folder); raise on the first error."""
    nb = nbformat.read(path, as_version=4)
    env_ci = os.environ.pop("CI", None)
    if smoke:
        os.environ["CI"] = "true"
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        os.environ.pop("CI", None)
        if env_ci is not None:
            os.environ["CI"] = env_ci
    return scrub(nb)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="default: every tutorials/*.ipynb")
    parser.add_argument("--no-write", action="store_true", help="execute only; leave the files as they are")
    args = parser.parse_args(argv)
    smoke = "CI" in os.environ
    paths = [HERE / Path(p).name for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, smoke=smoke)
        if not args.no_write:
            nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s ({'smoke' if smoke else 'full'} budgets)")


if __name__ == "__main__":
    main()
