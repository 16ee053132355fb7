"""The code stays as the team agreed: ruff's rules and mypy strict on the product code."""

from __future__ import annotations

import ast
import re
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


# The calls that copy a struct and leave behind what it keeps out of its fields, by module.
_COPIES = {"msgspec.structs": {"replace"}, "dataclasses": {"replace"}, "copy": {"copy", "deepcopy"}}
# A name that reads as jobrunner's settings: ``settings``, ``self._settings``, ``Settings()``,
# ``settings_for(x)``, ``get_settings()``; not another kind's (``retry_settings``).
_SETTINGS_NAME = re.compile(r"_*(settings\w*|(get|load|loaded|own)_settings)", re.IGNORECASE)


def _copy_calls_by_name(tree: ast.Module) -> set[str]:
    """How the module can call those copies: dotted (``msgspec.structs.replace``,
    ``structs.replace`` after ``from msgspec import structs``) or bare after a ``from`` import
    (``from dataclasses import replace``), under an ``as`` name too."""
    names = {f"{module}.{call}" for module, calls in _COPIES.items() for call in calls}
    for node in ast.walk(tree):
        imported: list[tuple[str, str]] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            imported = [(f"{node.module}.{a.name}", a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            imported = [(a.name, a.asname or a.name) for a in node.names]
        for full, bound in imported:
            module, _, call = full.rpartition(".")
            if call in _COPIES.get(module, ()):
                names.add(bound)
            names |= {f"{bound}.{each}" for each in _COPIES.get(full, ())}
    return names


def _reads_as_settings(value: ast.expr) -> bool:
    if isinstance(value, ast.Call):
        value = value.func
    name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")
    return bool(_SETTINGS_NAME.fullmatch(name))


def _settings_copies(source: str) -> list[int]:
    """The lines of ``source`` that copy settings with one of ``_COPIES``. By what is called
    (as imported), and by the name of what is copied: the first argument, or, with none, each
    keyword's name and value (``copy.copy(x=settings)``).

    Not seen: settings held under a name that does not read as settings (``cfg``, ``loaded``,
    ``retry_settings``), a copy function reached another way (``getattr``, a module alias held
    in a variable), and copies made through builtins (``msgspec.convert`` of
    ``msgspec.to_builtins(settings)``, ``type(settings)(**asdict(settings))``). Name settings
    ``settings``."""
    tree = ast.parse(source)
    copies = _copy_calls_by_name(tree)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or ast.unparse(node.func) not in copies:
            continue
        if node.args:
            copied = _reads_as_settings(node.args[0])
        else:
            copied = any(
                _SETTINGS_NAME.fullmatch(k.arg or "") or _reads_as_settings(k.value)
                for k in node.keywords
            )
        if copied:
            lines.append(node.lineno)
    return lines


def test_the_product_copies_settings_only_keeping_their_sources() -> None:
    """Settings are copied with ``Settings.replaced``, never ``msgspec.structs.replace`` and
    its like: a copy that lost where its values were written names the wrong source, or none,
    in a refusal or a warning. (Tests copy settings they made in code, which have no sources
    to lose.)"""
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: use Settings.replaced"
        for path in sorted((ROOT / "jobrunner").rglob("*.py"))
        for line in _settings_copies(path.read_text())
    ]
    assert not wrong, "\n".join(wrong)


def test_the_settings_copy_check_finds_the_copies_it_means() -> None:
    """The check above finds each form of copy of settings, as the module imported it, and not
    a copy of anything else nor another ``replace``."""

    def found(source: str) -> bool:
        return bool(_settings_copies(source))

    assert found("msgspec.structs.replace(settings, port=1)")
    assert found("msgspec.structs.replace(self._settings, port=1)")
    assert found("from msgspec import structs\nstructs.replace(ctx.settings, port=1)")
    assert found("from msgspec.structs import replace\nreplace(settings, port=1)")
    assert found("from dataclasses import replace as copied\ncopied(Settings(), port=1)")
    assert found("dataclasses.replace(self.settings_for(x), port=1)")
    assert found("msgspec.structs.replace(get_settings(), port=1)")
    assert found("copy.copy(ctx.settings)")
    assert found("from copy import deepcopy\ndeepcopy(settings)")
    assert found("msgspec.structs.replace(settings=s)")
    assert found("copy.copy(x=settings)")
    assert not found("msgspec.structs.replace(lease, pid=1)")
    assert not found("msgspec.structs.replace(context, settings=new)")
    assert not found("settings.replaced(port=1)")
    assert not found("text.replace(settings, '')")
    assert not found("path.replace(self.settings)")
    assert not found("replace(settings, port=1)")  # no replace imported: another's
    assert not found("msgspec.structs.replace(retry_settings, attempts=2)")
    assert not found("copy.copy(tls_settings)")
