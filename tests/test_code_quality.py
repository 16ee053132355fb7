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


# Calls that copy a struct and leave behind what it keeps out of its fields.
_BARE_COPIES = {"replace", "copy", "deepcopy"}


def _copies_settings(call: object) -> bool:
    """Whether ``call`` (an AST node) is ``msgspec.structs.replace``, ``dataclasses.replace``,
    ``copy.copy`` or ``copy.deepcopy`` (or one of them imported bare) of what reads as
    settings: a name ending in ``settings``, an attribute of that name, ``Settings(...)``."""
    import ast

    if not isinstance(call, ast.Call) or not call.args:
        return False
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in _BARE_COPIES:
        return False
    first = call.args[0]
    if isinstance(first, ast.Call):
        first = first.func
    said = first.attr if isinstance(first, ast.Attribute) else getattr(first, "id", "")
    return said.lower().endswith("settings")


def test_the_product_copies_settings_only_keeping_their_sources() -> None:
    """Settings are copied with ``Settings.replaced``, never ``msgspec.structs.replace`` and
    its like: a copy that lost where its values were written names the wrong source, or none,
    in a refusal or a warning. (Tests copy settings they made in code, which have no sources
    to lose.)"""
    import ast

    wrong = []
    for path in sorted((ROOT / "jobrunner").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if _copies_settings(node):
                line = getattr(node, "lineno", 0)
                wrong.append(f"{path.relative_to(ROOT)}:{line}: use Settings.replaced")
    assert not wrong, "\n".join(wrong)


def test_the_settings_copy_check_finds_the_copies_it_means() -> None:
    """The check above finds each form of copy, and not a copy of anything else."""
    import ast

    def found(source: str) -> bool:
        return any(_copies_settings(node) for node in ast.walk(ast.parse(source)))

    assert found("msgspec.structs.replace(settings, port=1)")
    assert found("dataclasses.replace(self.settings, port=1)")
    assert found("replace(Settings(), port=1)")
    assert found("copy.copy(ctx.settings)")
    assert not found("msgspec.structs.replace(lease, pid=1)")
    assert not found("settings.replaced(port=1)")
