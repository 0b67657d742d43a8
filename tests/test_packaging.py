"""Dependency extras: a plain install is the embedded inspector; every other import is declared and lazy."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "iad_agent"
#: Modules that belong to an extra: they may import its packages at module level, because
#: nothing imports them before :func:`iad_agent.extras.require` has checked the extra.
EXTRA_MODULES = {
    "iad_agent.policies.openai": "vlm",
    "iad_agent.policies.hf": "vlm",
    "iad_agent.training": "train",
    "iad_agent.service": "serve",
    "iad_agent.scale": "scale",
}
#: Extras that ``[dev]`` leaves out on purpose (see pyproject.toml), with the import names they
#: bring; the test environment may lack them. timm needs a torchvision built for the installed torch.
NOT_IN_DEV = {"timm": {"timm"}}


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


@pytest.fixture(scope="module")
def declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"base": {_name(r) for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        out[extra] = {_name(r) for r in reqs if not r.startswith("iad-agent")}
    return out


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names imported at module level, and anywhere (function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy: set[str] = set()
    eager: set[str] = set()

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name.split(".")[0] for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return [node.module.split(".")[0]]
        return []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never executed
            found = names(child)
            (eager if module_level else lazy).update(found)
            nested = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(tree, True)
    return eager, eager | lazy


@functools.lru_cache(maxsize=1)
def _import_names() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions(modules: set[str]) -> set[str]:
    mapping = _import_names()
    out = set()
    for m in modules:
        if m in sys.stdlib_module_names or m in ("iad_agent", "__future__"):
            continue
        dists = mapping.get(m)
        assert dists, f"import {m!r} belongs to no installed distribution"
        out.add(dists[0].lower().replace("_", "-"))
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _extra_of(module: str) -> str | None:
    return next((e for prefix, e in EXTRA_MODULES.items() if module == prefix or module.startswith(prefix + ".")), None)


def test_module_level_imports_are_base_dependencies_or_the_modules_extra(declared):
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module(path)
        eager, _ = _imports(path)
        allowed = declared["base"] | declared.get(_extra_of(module) or "base", set())
        for dist in sorted(_distributions(eager) - allowed):
            problems.append(f"{module} imports {dist} at module level, which a plain install lacks")
    assert not problems, "\n".join(problems)


def test_every_import_is_declared_somewhere(declared):
    everything = set().union(*declared.values())
    transitive_ok = {"huggingface-hub", "packaging", "tokenizers"}  # come with sentence-transformers / transformers
    missing = {}
    outside_dev = set().union(*NOT_IN_DEV.values())
    for extra, names in NOT_IN_DEV.items():
        assert names <= declared[extra], f"the {extra!r} extra should declare {names}"
    for path in sorted(SRC.rglob("*.py")):
        _, anywhere = _imports(path)
        for dist in _distributions(anywhere - outside_dev) - everything - transitive_ok:
            missing.setdefault(dist, []).append(_module(path))
    assert not missing, f"imported but declared in no extra: {missing}"


def test_dev_installs_every_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (self_ref,) = [r for r in extras["dev"] if r.startswith("iad-agent")]
    assert Requirement(self_ref).extras == set(extras) - {"dev"} - set(NOT_IN_DEV)
    assert {"pytest", "hypothesis", "playwright"} <= {_name(r) for r in extras["dev"] if not r.startswith("iad-agent")}


def test_a_missing_extra_is_named():
    code = ("import sys; sys.modules['openai'] = None\n"
            "from iad_agent.policies import make_policy\n"
            "from iad_agent.errors import MissingExtra\n"
            "try:\n    make_policy('openai', base_url='http://127.0.0.1:9/v1', model='m')\n"
            "except MissingExtra as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'vlm' extra" in out and "pip install 'iad-agent[vlm]'" in out
