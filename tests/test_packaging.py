"""What the code imports is what pyproject.toml installs.

A package that happens to be in the developer's environment but is not declared passes every
other test and breaks a fresh clone (``bash .ci/run``): igraph, the default Louvain backend,
was once such a package.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

tomllib = pytest.importorskip("tomllib")

#: Our own top-level packages.
LOCAL = {"datus", "tests"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _imported_modules() -> dict[str, Path]:
    """Top-level modules imported anywhere in the project's Python files -> one file importing it."""
    files = [*PROJECT_ROOT.glob("*.py"), *(p for d in ("datus", "tests", "experiments")
                                          for p in (PROJECT_ROOT / d).rglob("*.py"))]
    found: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    for path in (PROJECT_ROOT / "conf").rglob("*.yaml"):  # what hydra.utils.instantiate imports
        for target in re.findall(r"^\s*-?\s*_target_:\s*([\w.]+)", path.read_text(), flags=re.M):
            found.setdefault(target.split(".")[0], path)
    return found


def test_every_third_party_import_is_declared_in_pyproject():
    declared = _declared()
    providers = packages_distributions()
    missing = []
    for module, path in sorted(_imported_modules().items()):
        if module in LOCAL or module in sys.stdlib_module_names:
            continue
        distributions = {_normalise(d) for d in providers.get(module, [])}
        if not distributions & declared:
            missing.append(f"{module} (imported by {path.relative_to(PROJECT_ROOT)}; "
                           f"installed by {sorted(distributions) or 'nothing here'})")
    assert not missing, "imported but not in pyproject.toml: " + "; ".join(missing)
