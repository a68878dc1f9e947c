"""The package's architecture as a test: one import root, and imports that only go down the layers.

Every module of ``dawm_env`` (with ``agents/`` and ``training/``, installed as ``dawm_env.agents`` /
``dawm_env.training``) is parsed, never imported, so the rule also covers imports inside function bodies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Source folder -> installed package name (pyproject's ``package-dir``).
SOURCE_ROOTS = {"dawm_env": "dawm_env", "agents": "dawm_env.agents", "training": "dawm_env.training"}

#: Layer of each sub-package / module of ``dawm_env``: a module may import only lower layers (and its own
#: sub-package). Modules of one layer never import each other (``agents`` and ``training`` are peers).
LAYERS = {
    "tasks": 0, "paths": 0, "checkpoint": 0, "runtime": 0, "plotting": 0,
    "data": 1,
    "world_model": 2,
    "generation": 3, "planner": 3,
    "envs": 4,
    "agents": 5, "training": 5,
    "experiments": 6,
    "cli": 7,
}

#: Where an import of the package's own modules may sit inside a function: the CLI imports each command's
#: code lazily so that ``dawm --help`` / ``--version`` do not load torch; ``__getattr__`` of a package
#: ``__init__`` is a lazy export.
LAZY_IMPORTS_ALLOWED = {"dawm_env.cli"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in SOURCE_ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            out.append((".".join((package, *rel)), path))
    return out


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _own_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    """``(node, imported module)`` for every import in ``tree``, with relative imports refused."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}: use absolute dawm_env imports"
            found.append((node, node.module or ""))
    return found


def _function_bodies(tree: ast.AST) -> list[ast.AST]:
    return [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]


MODULES = _modules()


def test_every_source_folder_is_covered():
    groups = {_group(m) for m, _ in MODULES if _group(m)}
    assert groups <= set(LAYERS), f"modules without a layer: {sorted(groups - set(LAYERS))}"
    assert {"data", "world_model", "generation", "envs", "agents", "training", "experiments"} <= groups


def layer_violations(module: str, source: str) -> list[str]:
    """Imports in ``source`` (the text of ``module``) that go up or sideways, or use a bare root."""
    src_group = _group(module)
    bad = []
    for node, target in _own_imports(ast.parse(source)):
        root = target.split(".")[0]
        if root in ("agents", "training"):
            bad.append(f"line {node.lineno}: `{target}` is not an import root; use dawm_env.{target}")
            continue
        if root != "dawm_env" or module == "dawm_env":  # the root __init__ only registers the dream envs
            continue
        dst_group = _group(target)
        if not dst_group or dst_group == src_group:
            continue
        if LAYERS[dst_group] >= LAYERS[src_group]:
            bad.append(f"line {node.lineno}: {src_group} (layer {LAYERS[src_group]}) imports {target} "
                       f"(layer {LAYERS[dst_group]})")
    return bad


def hidden_imports(module: str, source: str, is_init: bool) -> list[str]:
    """Imports of the package's own modules inside function bodies (outside the allowed lazy places)."""
    if module in LAZY_IMPORTS_ALLOWED:
        return []
    bad = []
    for func in _function_bodies(ast.parse(source)):
        if func.name == "__getattr__" and is_init:
            continue
        for node, target in _own_imports(func):
            if target.split(".")[0] in ("dawm_env", "agents", "training"):
                bad.append(f"line {node.lineno} in {func.name}(): {target}")
    return bad


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down_the_layers(module, path):
    bad = layer_violations(module, path.read_text())
    assert not bad, f"{path.relative_to(REPO)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_own_imports_hidden_in_functions(module, path):
    bad = hidden_imports(module, path.read_text(), path.name == "__init__.py")
    assert not bad, (f"{path.relative_to(REPO)} imports its own package inside functions (move them to the top; "
                     "a cycle means a module sits in the wrong layer):\n" + "\n".join(bad))


def test_the_scan_catches_what_it_forbids():
    upward = "import numpy\nfrom dawm_env.tasks import get_task\nfrom dawm_env.agents.train import train_agent\n"
    assert len(layer_violations("dawm_env.data.build", upward)) == 1
    assert len(layer_violations("dawm_env.agents.train", "from dawm_env.training.idm import train_idm\n")) == 1
    assert len(layer_violations("dawm_env.cli", "from agents.train import train_agent\n")) == 1
    assert layer_violations("dawm_env.experiments.runner", upward) == []
    hidden = "def f():\n    from dawm_env.data.loading import load_dataset\n"
    assert len(hidden_imports("dawm_env.envs.dream", hidden, is_init=False)) == 1
    assert hidden_imports("dawm_env.cli", hidden, is_init=False) == []
