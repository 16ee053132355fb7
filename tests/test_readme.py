"""The README names what users and consumer authors rely on: every setting, every HTTP route,
every error code the API answers (with its status), every event and its fields.

It drifted before (settings added without a row, codes without a status, an event field left
out); these tests say which name is missing rather than letting the next reader find out."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings, load_settings
from jobrunner.contracts import events
from jobrunner.contracts.names import KIND_BY_EVENT
from jobrunner.services.api import errors
from jobrunner.services.api.app import create_app

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
API_CODE = ROOT / "jobrunner" / "services" / "api"


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of its level or above."""
    heading = re.search(rf"^(#+) {re.escape(title)}$", README, re.M)
    assert heading is not None, f"README has no section {title!r}"
    level = len(heading.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(README, heading.end())
    return README[heading.end() : end.start() if end else len(README)]


def test_every_setting_is_documented() -> None:
    """Each field of the settings object is named in the README as `name`."""
    missing = [name for name in Settings.__struct_fields__ if f"`{name}`" not in README]
    assert not missing, f"settings the README does not name: {missing}"


def _api_errors() -> set[tuple[int, str]]:
    """(status, code) of every ``ApiError(<status>, "<CODE>", ...)`` written in the API."""
    found: set[tuple[int, str]] = set()
    for path in API_CODE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ApiError"
                and len(node.args) >= 2
            ):
                status, code = (getattr(arg, "value", None) for arg in node.args[:2])
                if isinstance(status, int) and isinstance(code, str):
                    found.add((status, code))
    return found


def test_the_error_scan_finds_the_api_errors() -> None:
    """The scan below sees the API's errors (a scan that found none would pass anything)."""
    found = _api_errors()
    assert (404, "JOB_NOT_FOUND") in found
    assert (409, "TOKEN_IN_USE") in found


# What the framework's own refusals answer (errors.http_error_handler) and a fault in jobrunner.
# Its 429 mapping is left out: nothing in the app raises the framework's 429 (TOO_MANY_STREAMS
# is jobrunner's own, an ApiError).
FRAMEWORK_ERRORS = {
    (400, "BAD_REQUEST"),
    (400, "INVALID_REQUEST"),
    (404, "NOT_FOUND"),
    (405, "METHOD_NOT_ALLOWED"),
    (413, "BODY_TOO_LARGE"),
    (500, "INTERNAL_ERROR"),
}


def test_the_framework_errors_are_the_handlers_own() -> None:
    """The framework's codes listed here are the ones its handler maps statuses to."""
    mapped = set(errors._CODES_BY_STATUS.items())
    assert {
        e for e in FRAMEWORK_ERRORS if e[1] not in ("INVALID_REQUEST", "INTERNAL_ERROR")
    } <= mapped


@pytest.mark.parametrize(("status", "code"), sorted(_api_errors() | FRAMEWORK_ERRORS))
def test_every_error_code_is_documented_with_its_status(status: int, code: str) -> None:
    """Each code the API answers appears in the README on one line with its HTTP status."""
    pattern = rf"\b{status}\b[^\n]*`{code}`|`{status} {code}`"
    assert re.search(pattern, README), f"README does not give {code} with status {status}"


def test_every_route_is_documented() -> None:
    """Each JSON route of the API (not the web UI's pages) is named in the README."""
    app = create_app(load_settings())
    missing = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if not path.startswith("/api/") or path.startswith("/api/schema"):
            continue
        # The README writes a path's parameters by what they name ({id}, {name}), and a
        # sibling action after its first as `.../unarchive` on the same line.
        readme_form = re.sub(r"\{\w+_id\}", "{id}", path)
        parent, _, last = readme_form.rpartition("/")
        sibling = re.compile(rf"{re.escape(parent)}/[^`]*`[^\n]*`(\.\.\.)?/{re.escape(last)}`")
        if readme_form not in README and path not in README and not sibling.search(README):
            missing.append(path)
    assert not missing, f"routes the README does not name: {missing}"


@pytest.mark.parametrize("event", events.EVENT_TYPES, ids=lambda e: e.__name__)
def test_every_event_and_field_is_in_the_contracts_section(
    event: type[events.Event] | type[events.BatchEvent],
) -> None:
    """The contracts table gives each event on its subject with every field of its own."""
    contracts = section("Event contracts")
    common = set(events.Event.__struct_fields__) | set(events.BatchEvent.__struct_fields__)
    subject = f"`<prefix>.{'batch' if issubclass(event, events.BatchEvent) else 'job'}.<id>."
    row = next(
        (
            line
            for line in contracts.splitlines()
            if line.startswith(f"| {subject}{KIND_BY_EVENT[event]}` | `{event.__name__} ")
        ),
        None,
    )
    assert row is not None, f"no row for {event.__name__} on its subject"
    fields = [f for f in event.__struct_fields__ if f not in common]
    missing = [f for f in fields if not re.search(rf"\b{f}\b", row)]
    assert not missing, f"{event.__name__} fields the README does not give: {missing}"


def test_the_example_consumer_beside_up_reads_its_nats_url_from_runtime_json(
    tmp_path: Path,
) -> None:
    """The consumer example's command works beside `jobrunner up`: it takes the URL (own port,
    password) from the runtime.json `jobrunner up` writes, where `jobrunner events` finds it,
    and hands it over in the environment, not on the command line (`ps` shows that)."""
    from jobrunner.common.runtime import with_runtime
    from jobrunner.supervisor import write_runtime

    text = section("Event contracts")
    command = re.search(
        r"```bash\nJOBRUNNER_NATS_URL=\"\$\(python -c '([^']*)'\)\" \\\n"
        r"  python examples/failed_jobs\.py [^`]*```",
        text,
    )
    assert command, "the section shows no JOBRUNNER_NATS_URL=... examples/failed_jobs.py command"
    assert "--nats-url" not in command.group(0)
    url = "nats://jobrunner:secret@127.0.0.1:40123"
    state_dir = tmp_path / Settings().state_dir
    state_dir.mkdir()
    write_runtime(state_dir, {"nats_url": url, "prefix": "jobrunner"})
    printed = subprocess.run(
        [sys.executable, "-c", command.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == url
    # The key the command reads is the one the product's own tools read.
    settings = msgspec.structs.replace(Settings(), state_dir=str(state_dir))
    assert with_runtime(settings, {}).nats_url == url
