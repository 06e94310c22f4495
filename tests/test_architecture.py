"""The house rules (README "Layout"): no module imports one on a higher floor; nothing happens on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "datus"

#: Floors, lowest first: a module may import its own floor and the floors below, never above.
FLOORS: list[tuple[str, list[str]]] = [
    ("ground", ["datus.io", "datus.masks", "datus.metrics", "datus.shards", "datus.backbones", "datus.data",
                "datus.transforms", "datus.postprocess", "datus.figures", "datus.runs", "datus.cache"]),
    # what every trained stage shares: frozen features and their cache, resumable training, trained files
    ("shared", ["datus.features", "datus.training"]),
    ("discovery", ["datus.discovery"]),
    ("labeling", ["datus.labeling"]),
    ("methods", ["datus.methods", "datus.refine", "datus.projection", "datus.wnet", "datus.openvocab", "datus.primaps",
                 "datus.evaluation", "datus.foreground"]),
    ("pipeline", ["datus.pipeline", "datus.report"]),
    # the command-line layer and the module commands (python -m datus.viz | datus.bench)
    ("cli", ["datus.cli", "datus.viz", "datus.bench", "datus.attention"]),
]


def _floor(module: str) -> int:
    for level, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``datus.*`` module imported by ``path`` (at any depth, lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("datus")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datus") and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_every_module_is_on_a_floor():
    for path in sorted(PACKAGE.rglob("*.py")):
        if _module_name(path) != "datus":
            _floor(_module_name(path))


def test_no_module_imports_a_higher_floor():
    """Ground-floor modules (backbones, data, metrics, the mask format, shards, io, figures) import
    nothing above them; discovery and labelling never import the command-line layer, the pipeline,
    evaluation, the methods or viz; nothing but the command-line layer imports it."""
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "datus":
            continue
        for line, imported in _imports(path):
            if imported == "datus":
                continue
            if _floor(imported) > _floor(module):
                violations.append(f"{path.relative_to(PROJECT_ROOT)}:{line} ({FLOORS[_floor(module)][0]}) imports "
                                  f"{imported} ({FLOORS[_floor(imported)][0]})")
    assert not violations, "\n".join(violations)


def test_the_shared_floor_imports_only_the_ground_floor():
    """What every trained stage shares (features, training) stands on the ground floor alone: a method, the
    refinement or the pipeline can use it, and it never reaches back into them."""
    shared = _floor("datus.features")
    assert _floor("datus.training") == shared and FLOORS[shared][0] == "shared"
    for path in sorted(PACKAGE.glob("*.py")):
        if _module_name(path) in ("datus.features", "datus.training"):
            assert all(_floor(m) < shared for _, m in _imports(path)), path.name


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a discovery module importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from datus.pipeline import run_pipeline\n    import datus.cli.setup\n")
    assert [m for _, m in _imports(bad)] == ["datus.pipeline", "datus.cli.setup"]
    assert _floor("datus.pipeline") > _floor("datus.discovery.affinity")
    assert _floor("datus.cli.setup") > _floor("datus.labeling.run")


@pytest.mark.parametrize("module", ["datus", "datus.discovery", "datus.labeling", "datus.refine", "datus.pipeline",
                                    "datus.methods", "datus.masks", "datus.shards", "datus.features", "datus.training",
                                    "datus.primaps"])
def test_the_library_imports_without_hydra(module):
    """``datus`` below the command-line layer is importable where Hydra is not installed (OmegaConf
    may be: Lightning imports it)."""
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'hydra':\n"
            "            raise ModuleNotFoundError('no Hydra here: ' + name)\n"
            f"sys.meta_path.insert(0, Block())\nimport {module}\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_importing_the_cli_registers_nothing():
    """Resolvers exist only after register_resolvers(): importing a module has no side effect."""
    code = ("from omegaconf import OmegaConf\nimport datus.cli.setup as h\n"
            "assert not OmegaConf.has_resolver('datus.on_gpu'), 'registered on import'\n"
            "h.register_resolvers(); h.register_resolvers()\n"
            "assert OmegaConf.has_resolver('datus.on_gpu')\n"
            "cfg = OmegaConf.create({'x': '${datus.on_gpu:cpu}'})\nassert cfg.x is False\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


#: Options that are deliberately *other* settings of their classes (the paper's, or a variant a
#: README chapter measures); every other option's values are the library's defaults where both exist.
VARIANTS = {"graph/paper", "labeling/paper", "wnet/paper", "model/align_text", "model/align_block"}
CONF = PROJECT_ROOT / "conf"
#: Settings each option chooses for itself (no one value is the tuned one): which weights a backbone loads.
PER_OPTION = {("datus.backbones.build_backbone", "weights")}


def _targets(node, path: str):
    """Every ``_target_`` node of a config container, with its dotted path."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def _options():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment", "quality")):
        for option in sorted(group.glob("*.yaml")):
            if f"{group.name}/{option.stem}" not in VARIANTS and not option.stem.startswith("_"):
                yield group.name, option.stem


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("group", "option"), list(_options()))
def test_the_library_defaults_are_the_configs(group, option):
    """One source for every default: building a datus class from its config equals building it from the
    library's documented defaults where both name a value (the Python API does what the CLI does)."""
    import inspect

    from hydra.errors import ConfigCompositionException
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from datus.cli.compose import compose_config

    for entry in ("discover", "train", "evaluate"):
        try:
            cfg = compose_config(entry, [f"{group}={option}"])
        except ConfigCompositionException:
            continue  # the group is another entry point's
        break
    else:
        pytest.fail(f"{group}={option} composes with no entry point")
    container = OmegaConf.to_container(cfg, resolve=False)
    disagree = []
    for path, node in _targets(container.get(group), group):
        if not str(node["_target_"]).startswith("datus."):
            continue
        parameters = inspect.signature(get_object(node["_target_"])).parameters
        for name, parameter in parameters.items():
            if name not in node or parameter.default is inspect.Parameter.empty or (node["_target_"], name) in PER_OPTION:
                continue
            value = node[name]
            if isinstance(value, dict) or (isinstance(value, str) and "${" in value):
                continue  # a nested node (checked on its own) or another setting's value
            if _comparable(value) != _comparable(parameter.default):
                disagree.append(f"{path}.{name}: {value!r} in conf/{group}/{option}.yaml, "
                                f"{parameter.default!r} in {node['_target_']}")
    assert not disagree, "the library's defaults disagree with the config:\n" + "\n".join(disagree)
