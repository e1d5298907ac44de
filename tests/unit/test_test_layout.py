"""The tests' own layout: fakes and builders live in tests/helpers, and no test imports another test module.

A test module imported by another drags its fixtures and side effects along,
and a helper hidden in one test file is found by grepping, not by reading
tests/helpers. Checked by parsing, so nothing here imports the modules it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# Test packages: nothing under them may be imported by another module.
TEST_PACKAGES = ("tests.unit", "tests.integration", "tests.browser", "tests.gpu")


def _is_test_package(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in TEST_PACKAGES)


def _package_of(path: Path) -> str:
    """The dotted package a file under tests/ is in (`tests/unit/test_x.py` -> `tests.unit`)."""
    return ".".join(path.relative_to(TESTS.parent).parent.parts)


def forbidden_imports(source: str, package: str) -> list[str]:
    """`line: module` for every import, in `source`, of a module under a test package.

    `package` resolves relative imports. Covers `import tests.unit.x`,
    `from tests.unit.x import y`, `from tests import unit`, `from .test_x import y`
    and `importlib.import_module("tests.unit.x")`.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            # `from tests import unit` imports the package tests.unit itself.
            modules = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "import_module"
            )
        ):
            modules = [node.args[0].value]
        offenders = [m for m in modules if _is_test_package(m)]
        if offenders:
            found.append(f"{node.lineno}: {offenders[0]}")
    return found


def test_no_test_module_imports_another_test_module():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for hit in forbidden_imports(path.read_text(encoding="utf-8"), _package_of(path)):
            offenders.append(f"{path.relative_to(TESTS.parent)}:{hit}")
    assert not offenders, (
        "test modules import other test modules; move the shared fakes/builders to tests/helpers:\n"
        + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    "source, package",
    [
        ("from tests.unit.test_job_store import make_job", "tests.unit"),
        ("import tests.integration.test_metrics", "tests.integration"),
        ("import tests.gpu.test_gpu_share as share", "tests.unit"),
        ("from tests.browser import test_web_page", "tests.unit"),
        ("from tests import unit", "tests.helpers"),
        ("from .test_routes import FakeGenerator", "tests.unit"),
        ("from ..integration.test_load import JOB", "tests.unit"),
        ("from . import test_routes", "tests.unit"),
        ("def f():\n    from tests.unit.test_routes import FakeGenerator\n", "tests.unit"),
        ("import importlib\nimportlib.import_module('tests.unit.test_client')", "tests.unit"),
    ],
)
def test_the_check_catches_each_way_of_importing_a_test_module(source, package):
    assert forbidden_imports(source, package)


@pytest.mark.parametrize(
    "source, package",
    [
        ("from tests.helpers.jobs import make_job", "tests.unit"),
        ("import tests.helpers.app", "tests.integration"),
        ("from tests import helpers", "tests.unit"),
        ("from tests.conftest import data_dir", "tests.unit"),
        ("from .conftest import x", "tests"),
        ("import tests.unittest_like", "tests.unit"),
        ("NAME = 'tests.unit.test_routes'", "tests.unit"),
    ],
)
def test_the_check_allows_helpers_and_plain_strings(source, package):
    assert forbidden_imports(source, package) == []
