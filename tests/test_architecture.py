"""The package's shape: imports only run downward through the layers, no import cycle, no file over
300 lines, and every registered block or flow is exported. README.md's "Architecture" section draws
the same layers; a change that breaks one of these rules should change that section too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyro_snf

PACKAGE = Path(pyro_snf.__file__).resolve().parent
MAX_LINES = 300

#: Lowest layer first. A module may import modules of its own layer or of lower ones, never higher.
LAYERS: list[list[str]] = [
    ["pyro_snf.energy", "pyro_snf.weights", "pyro_snf.diagnostics"],
    ["pyro_snf.targets", "pyro_snf.transforms"],
    ["pyro_snf.blocks"],
    ["pyro_snf.path"],
    ["pyro_snf.distribution"],
    ["pyro_snf.train", "pyro_snf.augment", "pyro_snf.architectures", "pyro_snf.molecules"],
    ["pyro_snf.infer"],
    ["pyro_snf.distributed"],
    ["pyro_snf.examples", "pyro_snf.__main__"],
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to README's Architecture section)")


def _imports(module: str) -> set[str]:
    """pyro_snf modules that ``module`` imports anywhere in its source (type-only and lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != "pyro_snf"}
    return found - {module}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "pyro_snf"])
def test_imports_run_downward(module):
    upward = sorted(i for i in _imports(module) if _layer(i) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_no_module_imports_the_package_root():
    """``from pyro_snf import X`` inside the package would make every module depend on all of them."""
    offenders = [m for m, p in MODULES.items() if m != "pyro_snf" and any(
        isinstance(n, ast.ImportFrom) and n.module == "pyro_snf" and n.level == 0
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert not offenders


def test_no_import_cycle():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + "."):  # a package's __init__ importing its own submodules
                continue
            if state.get(n) == 1:
                raise AssertionError(" -> ".join(stack + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", list(MODULES))
def test_files_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines: split it (one concept per file)"


def test_registries_hold_exported_classes():
    from pyro_snf import blocks, transforms

    for name, cls in blocks.BLOCKS.items():
        assert getattr(blocks, cls.__name__) is cls, name
        assert isinstance(cls.metropolis_adjusted, bool)
    assert {"none", "coupling", "iaf", "affine", "real_nvp", "spline"} <= set(transforms.FLOWS)


def test_only_examples_import_the_molecules_extra():
    """openmm is an optional extra: nothing in the core package may import ``pyro_snf.molecules``."""
    offenders = [m for m in MODULES if not m.startswith(("pyro_snf.molecules", "pyro_snf.examples"))
                 and any(i.startswith("pyro_snf.molecules") for i in _imports(m))]
    assert offenders == []
