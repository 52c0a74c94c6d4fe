"""pyproject.toml declares what the code imports and ships every package (configs/ included)."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import clapcomp

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_normalise(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requirements}


def _imported_roots(paths) -> set[str]:
    roots = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots - set(sys.stdlib_module_names) - {"clapcomp", "__future__"}


def test_every_imported_package_is_declared():
    """Every third-party package imported by clapcomp/ or configs/ (function-local imports too)."""
    sources = [*(REPO / "clapcomp").rglob("*.py"), *(REPO / "configs").glob("*.py")]
    distributions = packages_distributions()
    undeclared = {}
    for root in sorted(_imported_roots(sources)):
        names = {_normalise(d) for d in distributions.get(root, [root])}
        if not names & _declared():
            undeclared[root] = sorted(names)
    assert not undeclared, f"imported but not in pyproject.toml (import name -> distribution): {undeclared}"


def test_every_package_ships_and_configs_ride_along():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "clapcomp").rglob("__init__.py")}
    assert listed == on_disk | {"clapcomp.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"clapcomp.configs": "configs"}


def test_one_version_source():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "clapcomp.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", clapcomp.__version__)
