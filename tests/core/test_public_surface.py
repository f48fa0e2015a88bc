"""The public names: what users see, what backend authors see, and the docs.

A drift between the code and the pages that describe it fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import executors
import executors.backend
from _programs import run_python

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "plugin_example" / "src" / "executors_simple_threads"

pytestmark = pytest.mark.timeout(60)


def _documented(page: str, prefix: str) -> set[str]:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return set(re.findall(rf"^::: {re.escape(prefix)}(\w+)\s*$", text, re.MULTILINE))


def test_the_api_page_documents_exactly_the_public_names() -> None:
    # executors.testing is public but not in __all__: it imports pytest.
    assert _documented("api.md", "executors.") == {*executors.__all__, "testing"}


def test_every_public_name_resolves() -> None:
    for name in executors.__all__:
        assert getattr(executors, name) is not None
    for name in executors.backend.__all__:
        assert getattr(executors.backend, name) is not None


def test_the_architecture_page_lists_the_public_names() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("├── __init__.py", 1)[1].split("├── _protocol.py", 1)[0]
    listed = set(re.findall(r"\w+", block))
    missing = {
        name
        for name in executors.__all__
        # The error classes are listed as "errors".
        if not name.endswith("Error") and name not in listed
    }
    assert not missing


@pytest.mark.parametrize(
    "name", ["BaseExecutor", "Call", "CallQueue", "fail_futures", "settle"]
)
def test_backend_author_names_left_the_top_level_with_a_warning(name: str) -> None:
    assert name not in executors.__all__
    with pytest.warns(DeprecationWarning, match=f"executors.backend.{name}"):
        moved = getattr(executors, name)
    assert moved is getattr(executors.backend, name)


def test_the_plugin_example_imports_only_public_modules() -> None:
    private = []
    for path in PLUGIN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                names = [f"{node.value.id}.{node.attr}"]
            else:
                continue
            private += [
                f"{path.name}:{node.lineno}: {n}"
                for n in names
                if n.startswith("executors.") and ".backend._" not in n
                for part in [n.split(".")[1]]
                if part.startswith("_")
            ]
    assert not private


def test_import_executors_does_not_import_the_backend_module() -> None:
    code = "import sys, executors; print('executors.backend' in sys.modules)"
    out = run_python("-c", code)
    assert out.stdout.strip() == "False", out.stderr


def test_the_architecture_page_lists_the_backend_hooks_in_order() -> None:
    from executors._hooks import HOOKS

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The hooks a backend implements", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\* `(\w+)\(", section, flags=re.M)
    assert tuple(documented) == HOOKS


def test_the_base_class_and_the_plugin_example_defer_to_the_hooks_class() -> None:
    # The hook list has one source: no second list that could disagree.
    from executors import _base

    assert "BackendHooks" in (_base.__doc__ or "")
    assert "three hooks" not in (_base.__doc__ or "")
