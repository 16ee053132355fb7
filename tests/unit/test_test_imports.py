"""No module of tests/ imports from a test module (``test_*.py``): what two test modules share
lives in a helper module (tests/tools, a support module) or a conftest.py. A test module that
imports another one runs that module's fixtures and module-level code in its own, breaks when
the other's tests are renamed or moved, and hides which helper is shared."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    """``tests/faults/test_x.py`` -> ``tests.faults.test_x``."""
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module the source of ``module`` imports (a name imported from a package counted as
    a module too, since it may be one): its line and dotted name, relative imports resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def imported_test_modules(source: str, module: str, is_package: bool = False) -> list[int]:
    """The lines of ``module``'s source that import a test module of tests/."""
    return sorted(
        {
            line
            for line, name in imported_modules(source, module, is_package)
            if name.startswith("tests.")
            and any(part.startswith("test_") for part in name.split(".")[1:])
        }
    )


def test_no_module_of_the_tests_imports_a_test_module() -> None:
    """A helper or fixture two test modules share is imported from tests/tools or a support
    module (or is a conftest.py fixture), never from another test module."""
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for path in sorted(TESTS.rglob("*.py"))
        for line in imported_test_modules(
            path.read_text(), module_name(path), path.name == "__init__.py"
        )
    ]
    assert found == [], "these lines import a test module: " + ", ".join(found)


def test_the_check_sees_absolute_relative_and_package_imports() -> None:
    """Each way of writing such an import is found; an import of a helper module is not."""
    source = (
        "from tests.test_up import Up\n"
        "import tests.faults.test_batch_action_faults\n"
        "from tests import test_terminal_client\n"
        "from .test_batch_action_faults import BatchJobs\n"
        "from . import test_nats_pause\n"
        "from tests.tools.runners import REPO\n"
        "from tests.faults import figures\n"
        "from .cluster import FaultCluster\n"
        "def later():\n"
        "    from tests.test_health_nats_frozen import thaw\n"
    )
    assert imported_test_modules(source, "tests.faults.test_probe") == [1, 2, 3, 4, 5, 10]
