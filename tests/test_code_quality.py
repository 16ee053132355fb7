"""The code stays as the team agreed: ruff's rules and mypy strict on the product code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_finds_nothing() -> None:
    """`ruff check` passes with the rule list in pyproject.toml."""
    result = run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing() -> None:
    """`mypy` (strict, on contracts, services and jobrunner) reports no error."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


# Dependencies point one way: each layer imports only from the layers before it.
LAYERS = (
    ("jobrunner.contracts",),
    ("jobrunner.common", "jobrunner.embedded"),
    ("jobrunner.services",),
)


def _layer(module: str) -> int:
    for depth, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return depth
    return len(LAYERS)  # the composition root: the jobrunner command, the supervisor


def _imports(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("jobrunner")}


def test_dependencies_point_one_way() -> None:
    """contracts <- common <- services <- the composition root; nothing imports a layer above it,
    and no service imports another service."""
    wrong = []
    for path in sorted((ROOT / "jobrunner").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                wrong.append(f"{module} imports {imported}")
            parts, imported_parts = module.split("."), imported.split(".")
            if (
                parts[1:2] == imported_parts[1:2] == ["services"]
                and len(parts) > 2
                and len(imported_parts) > 2
                and parts[2] != imported_parts[2]
            ):
                wrong.append(f"{module} imports another service: {imported}")
    assert not wrong, "\n".join(wrong)


def test_nothing_generic_is_installed_at_the_top_level() -> None:
    """Every package the wheel installs lives under `jobrunner`."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"]["find"]["include"] == ["jobrunner*"]
    top_level = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert top_level <= {"jobrunner", "tests", "bench"}, top_level


# What a runner, projector or notifier process imports: the command line, its service, its
# metrics listener.
SERVICE_PROCESS_IMPORTS = """
import sys
import jobrunner.cli
jobrunner.cli.build_parser()
import jobrunner.common.metricsexposition
import jobrunner.services.notifier.service
import jobrunner.services.projector.service
import jobrunner.services.runner.service
print(sorted(m for m in sys.modules if m.split(".")[0] == "litestar" or
             m.startswith("jobrunner.services.api")))
"""


def test_the_services_other_than_the_api_do_not_load_it() -> None:
    """Starting a runner, projector or notifier loads neither the API nor Litestar: importing
    them is most of the API's start-up, which the other services need not pay."""
    result = subprocess.run(
        [sys.executable, "-c", SERVICE_PROCESS_IMPORTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
