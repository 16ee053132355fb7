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

from jobrunner.common import artifactnames, artifactpurges, artifactstore
from jobrunner.common.settings import BOUNDS, Settings, load_settings
from jobrunner.contracts import events
from jobrunner.contracts.names import KIND_BY_EVENT
from jobrunner.services.api import artifactupload, errors
from jobrunner.services.api.app import create_app
from jobrunner.services.notifier import sender

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
API_CODE = ROOT / "jobrunner" / "services" / "api"


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of its level or above
    (a ``# comment`` line in a fenced code block is no heading)."""
    lines = README.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if re.fullmatch(rf"(#+) {re.escape(title)}\n?", line)),
        None,
    )
    assert start is not None, f"README has no section {title!r}"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    fenced = False
    for end in range(start + 1, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", lines[end]):
            break
    else:
        end = len(lines)
    return "".join(lines[start + 1 : end])


def test_every_setting_is_documented() -> None:
    """Each field of the settings object is named in the README as `name`."""
    missing = [name for name in Settings.__struct_fields__ if f"`{name}`" not in README]
    assert not missing, f"settings the README does not name: {missing}"


def _api_errors() -> set[tuple[int, str]]:
    """(status, code) of every ``ApiError(<status>, "<CODE>", ...)`` written in the API, and
    the 422 of every ``jsonbody.decode(body, <type>, "<CODE>", ...)``."""
    found: set[tuple[int, str]] = set()
    for path in API_CODE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) == ("jsonbody", "decode")
            ):
                code = getattr(node.args[2], "value", None)
                if isinstance(code, str):
                    found.add((422, code))
            elif (
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
    assert (422, "INVALID_REQUEST") in found  # a job request of the wrong shape


# What the framework's own refusals answer (errors.http_error_handler: every status it maps, and
# INVALID_REQUEST for a validation error) and a fault in jobrunner. Taken from the mapping, so a
# status mapped but never documented fails: it was either contract or dead (429, until s29).
FRAMEWORK_ERRORS = set(errors._CODES_BY_STATUS.items()) | {
    (400, "INVALID_REQUEST"),
    (500, "INTERNAL_ERROR"),
}


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


def plain_subjects() -> list[str]:
    """Every plain NATS subject (outside the stream) ``contracts/names.py`` builds, written as
    the README writes it: ``{self.prefix}`` as ``<prefix>``, ``{job_id}`` as ``<job id>``."""
    source = (ROOT / "jobrunner" / "contracts" / "names.py").read_text()
    templates = re.findall(r'f"(_jobrunner\.[^"]*)"', source)
    assert templates, "names.py builds no plain subject: the pattern above is out of date"
    return [
        re.sub(r"\{(?:self\.)?(\w+)\}", lambda m: f"<{m[1].replace('_', ' ')}>", template)
        for template in templates
    ]


@pytest.mark.parametrize("subject", plain_subjects())
def test_every_plain_nats_subject_is_in_the_contracts_section(subject: str) -> None:
    """A NATS administrator finds every subject jobrunner uses outside its stream."""
    assert f"`{subject}`" in section("Event contracts")


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


def _job_error_table() -> set[str]:
    """The codes in the first column of the README's table of a failed job's ``error``."""
    api = section("HTTP API")
    start = api.index("A failed job carries `error: {code, message}`")
    table = api[start:].split("\n\n")[1]
    codes: set[str] = set()
    for line in table.splitlines()[2:]:
        codes |= set(re.findall(r"`([A-Z_]+)`", line.split("|")[1]))
    return codes


def test_the_job_error_table_gives_every_job_error_code() -> None:
    """The README's table of a job's error codes names each ErrorCode, and only those (a code
    listed there that jobrunner never writes would have consumers handle a case that never
    comes)."""
    assert _job_error_table() == {code.value for code in events.ErrorCode}


def test_every_job_error_code_is_written_somewhere() -> None:
    """Each ErrorCode is used by a service (one never written is a dead promise to consumers:
    CANCELLED and INTERNAL_ERROR were, until session 29)."""
    used: set[str] = set()
    for path in (ROOT / "jobrunner").rglob("*.py"):
        if path.parent.name == "contracts":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "ErrorCode"
            ):
                used.add(node.attr)
    unused = [code.name for code in events.ErrorCode if code.name not in used]
    assert not unused, f"job error codes nothing writes: {unused}"


def _shown(value: object) -> str:
    """A default as the README's settings table writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _settings_rows() -> list[tuple[list[str], str]]:
    """(names, default column) of each row of the settings table naming settings only."""
    fields = set(Settings.__struct_fields__)
    rows = []
    for line in README.splitlines():
        row = re.match(r"\| ((?:`\w+`(?:, )?)+) \| ([^|]*) \|", line)
        if row is not None:
            names = re.findall(r"`(\w+)`", row.group(1))
            if set(names) <= fields:
                rows.append((names, row.group(2)))
    return rows


def test_every_settings_default_is_the_readmes() -> None:
    """The settings table gives each setting's default as the code has it (a row naming two
    settings gives theirs in order, or one for both; an empty string is written "empty")."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(Settings)}
    rows = _settings_rows()
    assert len(rows) > 50  # the table was found
    wrong = []
    for names, column in rows:
        given = re.findall(r"`([^`]*)`", column)
        for i, name in enumerate(names):
            default = defaults[name]
            if name == "job_types_file":  # an absolute path in the code, the file's name here
                ok = f"`{Path(str(default)).name}`" in column
            elif default == "":
                ok = column.startswith("empty")
            else:
                ok = bool(given) and given[min(i, len(given) - 1)] == _shown(default)
            if not ok:
                wrong.append(f"{name}: code {default!r}, README {column[:60]!r}")
    assert not wrong, "\n".join(wrong)


def test_every_numeric_settings_range_is_the_readmes() -> None:
    """The settings tables' ``takes`` column gives each numeric setting's range as the code
    checks it (inf was accepted while the README said nothing of an upper bound), by position in a
    row naming several."""
    wrong = []
    for line in README.splitlines():
        row = re.match(r"\| ((?:`\w+`(?:, )?)+) \| [^|]* \| ([^|]*) \|", line)
        if row is None:
            continue
        names = re.findall(r"`(\w+)`", row.group(1))
        # One range for every setting of the row, or one per setting in the row's order.
        ranges = row.group(2).split("; ")
        for i, name in enumerate(names):
            if name in BOUNDS and BOUNDS[name].words() != ranges[min(i, len(ranges) - 1)]:
                wrong.append(f"{name}: code {BOUNDS[name].words()!r}, README {row.group(2)!r}")
    assert not wrong, "\n".join(wrong)
    tables = "\n".join(line for line in README.splitlines() if line.startswith("| `"))
    assert all(f"`{name}`" in tables for name in BOUNDS)


def test_every_fault_test_file_is_in_the_faults_table() -> None:
    """Each module of tests/faults/ is named in "Faults we test" (six were not, until s29)."""
    faults = section("Faults we test")
    files = sorted(p.name for p in (ROOT / "tests" / "faults").glob("test_*.py"))
    assert files  # the folder was found
    missing = [name for name in files if f"`{name}`" not in faults]
    assert not missing, f"fault tests the README does not name: {missing}"


def test_the_webhook_bounds_are_the_contracts() -> None:
    """The Webhooks section gives the bounds a webhook is checked against."""
    webhooks = section("Webhooks")
    for bound in (
        events.MAX_WEBHOOK_URL_CHARS,
        events.MAX_WEBHOOK_HEADERS,
        events.MAX_WEBHOOK_HEADER_CHARS,
    ):
        assert f"at most {bound:,}" in webhooks, f"the Webhooks section does not give {bound:,}"


def test_the_artifacts_section_gives_the_codes_figures() -> None:
    """Each figure the Artifacts section states is the constant the code uses."""
    text = " ".join(section("Artifacts").split())
    kib = artifactstore.CHUNK_BYTES // 1024
    expected = {
        "CHUNK_BYTES": f"{kib} KiB chunks",
        "READ_BATCH_CHUNKS": f"{kib} KiB chunks from an ephemeral pull consumer, "
        + {8: "eight"}.get(artifactstore.READ_BATCH_CHUNKS, "?")
        + " at a time",
        "PIPELINE_CHUNKS": f"{artifactstore.PIPELINE_CHUNKS} in flight",
        "MAX_ARTIFACT_NAME_CHARS": f"more than {events.MAX_ARTIFACT_NAME_CHARS:,} characters",
        "MAX_NAME_BYTES": f"more than {artifactnames.MAX_NAME_BYTES:,} bytes in UTF-8",
        "MAX_PART_BYTES": f"a part over {artifactnames.MAX_PART_BYTES} bytes",
        "DESCRIPTION_TO_CONSUMER_SECONDS": (
            f"at least {artifactstore.DESCRIPTION_TO_CONSUMER_SECONDS:g} s"
        ),
        "PURGE_ATTEMPTS": f"{artifactstore.PURGE_ATTEMPTS} times in a row",
        "GUARD_SUBJECTS": f"a consumer of the bucket per {artifactstore.GUARD_SUBJECTS} members",
        "UPLOAD_PATIENCE_SECONDS": f"({artifactupload.UPLOAD_PATIENCE_SECONDS:g} s,",
        "artifact_upload_window_seconds": (
            f"within the upload window ({Settings().artifact_upload_window_seconds:g} s"
        ),
        "SERVER_SUBJECTS_PAGE": f"a page of {artifactpurges.SERVER_SUBJECTS_PAGE:,}",
        "DESCRIBING_WINDOW_SECONDS": {3600.0: "an hour"}.get(
            artifactpurges.DESCRIBING_WINDOW_SECONDS, "?"
        ),
    }
    wrong = {name: phrase for name, phrase in expected.items() if phrase not in text}
    assert not wrong, f"the Artifacts section does not say: {wrong}"


def test_the_webhook_attempt_table_gives_every_code_the_notifier_writes() -> None:
    """Each attempt error code written in jobrunner is a row of the Webhooks section's table,
    and each row one that is written."""
    written: set[str] = set()
    for path in (ROOT / "jobrunner").rglob("*.py"):
        written |= set(re.findall(r'"(WEBHOOK_[A-Z_]+)"', path.read_text()))
    rows = set(re.findall(r"^\| `(WEBHOOK_[A-Z_]+)` \|", section("Webhooks"), re.M))
    assert written  # the scan found the codes
    assert rows == written


def test_the_retried_statuses_are_the_readmes() -> None:
    """The Webhooks section's retried statuses are those the sender retries."""
    retried = [s for s in range(300, 600) if sender._classify(s)[2]]
    named = [s for s in retried if s < 500]
    assert retried == named + list(range(500, 600))  # every 5xx, and some 4xx
    phrase = ", ".join(str(s) for s in named) + " or 5xx"
    given = re.findall(r"(?:\d{3}, )*\d{3} or 5xx", " ".join(section("Webhooks").split()))
    assert given  # the section names them
    assert set(given) == {phrase}


def _defined_names(path: Path) -> set[str]:
    """Functions, classes and assigned names anywhere in a module (methods and attributes too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_code_reference_names_something_that_exists() -> None:
    """Each `module.name` the README cites (``fanout.TAKE_BYTES``, ``retry.until_done``) names a
    module of jobrunner that defines it: a renamed constant leaves no stale pointer."""
    modules: dict[str, list[Path]] = {}
    for path in (ROOT / "jobrunner").rglob("*.py"):
        modules.setdefault(path.stem, []).append(path)
    cited = set(re.findall(r"`(\w+)\.(\w+)(?:\.\w+)?(?:\(\))?`", README))
    checked = 0
    stale = []
    for module, name in sorted(cited):
        if module not in modules or name in ("json", "py", "toml", "md", "sql"):
            continue  # not a module of jobrunner, or a file's name (`runtime.json`)
        checked += 1
        # A module name may be several modules' (runner/artifacts.py, api/routes/artifacts.py).
        if not any(name in _defined_names(path) for path in modules[module]):
            stale.append(f"{module}.{name}")
    assert checked > 10  # the scan found the references
    assert not stale, f"the README cites what does not exist: {stale}"


# Names of jobrunner's that are not metrics: the session cookie, a stream's metadata key.
NOT_METRICS = {"jobrunner_session", "jobrunner_contract"}


def test_the_metrics_table_gives_every_metric_and_only_those() -> None:
    """Each metric name written in jobrunner (prometheus_client's and the custom collectors')
    is a row of the Metrics table, and each name there is one of them."""

    def base(name: str) -> str:
        return name.removesuffix("_total")  # prometheus_client adds it to a counter's name

    written: set[str] = set()
    for path in (ROOT / "jobrunner").rglob("*.py"):
        written |= {base(n) for n in re.findall(r'"(jobrunner_[a-z_]+)"', path.read_text())}
    written -= NOT_METRICS
    table = {
        base(name)
        for line in section("Metrics").splitlines()
        if line.startswith("| `jobrunner_")
        for name in re.findall(r"`(jobrunner_[a-z_]+)`", line.split("|")[1])
    }
    assert len(written) > 10  # the scan found them
    assert table == written


def test_every_health_problem_code_is_in_the_health_section() -> None:
    """Each code ``GET /health`` lists a problem with (``Problem("CODE", ...)``) is named there."""
    codes = set(re.findall(r'Problem\(\s*"([A-Z_]+)"', (API_CODE / "health.py").read_text()))
    assert len(codes) > 3  # the scan found them
    health = section("Health")
    missing = sorted(code for code in codes if f"`{code}`" not in health)
    assert not missing, f"health codes the README does not name: {missing}"


def test_every_command_the_readme_names_is_one_jobrunner_has() -> None:
    """`jobrunner NAME` in the README (in backticks or at the start of a code block's line) is
    a command of `jobrunner --help`: it once named a `jobrunner follow` that never existed."""
    from jobrunner.cli import build_parser

    commands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action.choices, dict)  # the subcommands' action
    )
    named = set(re.findall(r"`jobrunner ([a-z][a-z-]*)", README))
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", README, re.MULTILINE | re.DOTALL):
        named |= set(re.findall(r"^(?:\$ )?jobrunner ([a-z][a-z-]*)", block, re.MULTILINE))
    assert named, "the scan found no command"
    assert sorted(named - set(commands)) == []
