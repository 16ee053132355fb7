"""Job types are configuration: a TOML file names each type, its argv and its typed parameters.

Format (one table per type)::

    [job_types.enrich_search]
    title = "Phase 2: Websuche"
    description = "Website-Enrichment via Suchmaschine"
    argv = ["{python}", "-m", "jobrunner.demo_tools.enrich_search"]
    timeout_seconds = 3600
    lock = "datev_sheet"        # job types naming the same lock never run at the same time
    on_busy = "reject"          # or "queue"
    webhooks = [{ url = "https://example.com/hooks/jobs", secret_env = "EXAMPLE_HOOK_SECRET" }]

    [job_types.enrich_search.parameters.plz_filter]
    type = "string"             # string | bool | enum | multi_enum | integer
    flag = "--plz-filter"
    pattern = "^[0-9]{0,5}$"

The argv is built without a shell: the template's elements, with ``{python}`` replaced by the
runner's interpreter and an element that is exactly ``{name}`` replaced by that parameter, then each
parameter that has a ``flag``, in the order they are declared.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from jobrunner.common import webhookurl
from jobrunner.contracts.events import WebhookTarget

ParamKind = Literal["string", "bool", "enum", "multi_enum", "integer"]
MAX_STRING_LENGTH = 4096


class JobTypeConfigError(Exception):
    pass


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    label: str = ""


class Parameter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: ParamKind
    label: str = ""
    help: str = ""
    flag: str | None = None
    required: bool = False
    default: Any = None
    # string
    pattern: str | None = None
    # The pattern in words for the people filling in the form ("up to five digits"): shown
    # instead of the regex, which only its author reads as a format.
    pattern_help: str = ""
    max_length: int = 256
    allow_leading_dash: bool = False
    # enum, multi_enum
    choices: list[Choice] = []
    # integer
    minimum: int | None = None
    maximum: int | None = None


class TypeWebhook(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A webhook every job of the type notifies when it ends (after the request's own)."""

    url: str
    headers: dict[str, str] = {}
    # The name of an environment variable of the notifier holding this webhook's signing secret
    # (instead of the installation's webhook_secret); the secret itself never enters the file.
    secret_env: str | None = None


class JobType(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    title: str = ""
    description: str = ""
    argv: list[str] = []
    callable: str | None = None
    parameters: dict[str, Parameter] = {}
    timeout_seconds: float = 3600.0
    cancel_grace_seconds: float = 10.0
    lock: str | None = None
    on_busy: Literal["reject", "queue"] = "reject"
    cwd: str | None = None
    env: dict[str, str] = {}
    mask: list[str] = []
    progress_pattern: str | None = None
    level_pattern: str | None = None
    result_pattern: str | None = None
    webhooks: list[TypeWebhook] = []
    # Done elsewhere: no tool runs; a worker reports over HTTP with the job's callback token.
    external: bool = False
    # An external job that reports nothing for this long fails PROCESSING_TIMEOUT (without it:
    # nothing for ``timeout_seconds``).
    heartbeat_seconds: float | None = None


# What an external type cannot have: it runs nothing in the runner.
_TOOL_ONLY_FIELDS = ("argv", "callable", "cwd", "env", "mask")


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    code: str
    message: str


class ParameterError(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def load_job_types(path: str | Path) -> dict[str, JobType]:
    """Load and check a job-types file; raises JobTypeConfigError with a readable sentence."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise JobTypeConfigError(f"job types file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobTypeConfigError(f"job types file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobTypeConfigError(f"job types file {path} cannot be read: {exc}") from None
    declared = raw.get("job_types", {})
    if not isinstance(declared, dict):
        raise JobTypeConfigError(f"job types file {path}: job_types must be a table of job types")
    types: dict[str, JobType] = {}
    for name, body in declared.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
            raise JobTypeConfigError(f"job type name {name!r} must be snake_case")
        if not isinstance(body, dict):
            raise JobTypeConfigError(f"job type {name!r} in {path} must be a table")
        _expand_plain_choices(body)
        _check_pattern_help_type(name, body)
        try:
            job_type = msgspec.convert({**body, "name": name}, JobType)
        except msgspec.ValidationError as exc:
            raise JobTypeConfigError(f"job type {name!r} in {path}: {exc}") from None
        _check_kind(job_type)
        if job_type.callable and not re.fullmatch(
            r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", job_type.callable
        ):
            raise JobTypeConfigError(
                f"job type {name!r}: callable must look like 'package.module:function'"
            )
        for field, groups in (
            ("progress_pattern", {"current", "percent"}),
            ("level_pattern", {"level"}),
            ("result_pattern", set()),
        ):
            pattern = getattr(job_type, field)
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise JobTypeConfigError(f"job type {name!r}: bad {field}: {exc}") from None
            if groups and not groups & set(compiled.groupindex):
                raise JobTypeConfigError(
                    f"job type {name!r}: {field} needs a group named "
                    + " or ".join(f"(?P<{g}>...)" for g in sorted(groups))
                )
        _check_placeholders(job_type)
        _check_webhooks(job_type)
        for pname, param in job_type.parameters.items():
            if param.pattern is not None:
                try:
                    re.compile(param.pattern)
                except re.error as exc:
                    raise JobTypeConfigError(
                        f"job type {name!r}, parameter {pname!r}: bad pattern: {exc}"
                    ) from None
            if param.pattern_help and param.pattern is None:
                raise JobTypeConfigError(
                    f"job type {name!r}, parameter {pname!r}: pattern_help needs a pattern "
                    "(it is the pattern in words): add the pattern or drop pattern_help"
                )
            if param.type in ("enum", "multi_enum") and not param.choices:
                raise JobTypeConfigError(f"job type {name!r}, parameter {pname!r} needs choices")
            error = None if param.default is None else _check_value(param, param.default)
            if error:
                # Caught here, not as a bad argv (or a 400 the client cannot fix) at run time.
                raise JobTypeConfigError(
                    f"job type {name!r}, parameter {pname!r}: default {param.default!r} {error[1]}"
                )
        types[name] = job_type
    if not types:
        raise JobTypeConfigError(f"job types file {path} defines no [job_types.*] table")
    return types


def _check_pattern_help_type(name: str, body: dict[str, Any]) -> None:
    """``pattern_help`` that is not a string, refused naming its parameter (msgspec's own
    error says only ``$.parameters[...]``)."""
    parameters = body.get("parameters")
    if not isinstance(parameters, dict):
        return
    for pname, param in parameters.items():
        if isinstance(param, dict) and not isinstance(param.get("pattern_help", ""), str):
            raise JobTypeConfigError(
                f"job type {name!r}, parameter {pname!r}: pattern_help must be a string "
                "(the pattern in words)"
            )


def _check_kind(job_type: JobType) -> None:
    """A tool (argv), a callable, or external: exactly one, with the timeouts each needs."""
    name = job_type.name
    if job_type.timeout_seconds <= 0:
        raise JobTypeConfigError(f"job type {name!r}: timeout_seconds must be above 0")
    if job_type.external:
        given = [f for f in _TOOL_ONLY_FIELDS if getattr(job_type, f)]
        if given:
            raise JobTypeConfigError(
                f"job type {name!r} is external (a worker elsewhere reports it over HTTP), so it "
                f"takes no {', '.join(given)}"
            )
        if job_type.heartbeat_seconds is not None and not (
            0 < job_type.heartbeat_seconds <= job_type.timeout_seconds
        ):
            raise JobTypeConfigError(
                f"job type {name!r}: heartbeat_seconds must be above 0 and at most "
                f"timeout_seconds ({job_type.timeout_seconds:g})"
            )
        return
    if job_type.heartbeat_seconds is not None:
        raise JobTypeConfigError(
            f"job type {name!r}: heartbeat_seconds is for external job types only (external = true)"
        )
    if bool(job_type.argv) == bool(job_type.callable):
        raise JobTypeConfigError(
            f"job type {name!r} needs either an argv or a callable (or external = true)"
        )


def _check_placeholders(job_type: JobType) -> None:
    """An argv element ``{name}`` of a parameter must always have one value to put there."""
    for element in job_type.argv:
        if not (element.startswith("{") and element.endswith("}")):
            continue
        param = job_type.parameters.get(element[1:-1])
        if param is None:
            continue  # not a parameter: passed as written
        if param.type == "multi_enum":
            raise JobTypeConfigError(
                f"job type {job_type.name!r}: argv element {element} names a multi-choice "
                "parameter, which is no single argument; give the parameter a flag instead"
            )
        if not param.required and param.default is None:
            # Left out, the tool would receive the text "{name}" itself.
            raise JobTypeConfigError(
                f"job type {job_type.name!r}: argv element {element} names an optional parameter "
                "without a default; make it required, give it a default, or give it a flag instead"
            )


def _check_webhooks(job_type: JobType) -> None:
    for n, hook in enumerate(job_type.webhooks):
        target = WebhookTarget(url=hook.url, headers=hook.headers)
        problems = webhookurl.check(target, field=f"webhooks[{n}]")
        if problems:
            raise JobTypeConfigError(
                f"job type {job_type.name!r}: "
                + "; ".join(f"{p.field} {p.message}" for p in problems)
            )
        if hook.secret_env is not None and not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*", hook.secret_env
        ):
            raise JobTypeConfigError(
                f"job type {job_type.name!r}: webhooks[{n}].secret_env must name an "
                "environment variable"
            )


def _expand_plain_choices(body: dict[str, Any]) -> None:
    """A choice written as a bare string is a choice with that value. Other shapes are left for
    msgspec to refuse with a message that names the field."""
    parameters = body.get("parameters")
    if not isinstance(parameters, dict):
        return
    for pbody in parameters.values():
        choices = pbody.get("choices") if isinstance(pbody, dict) else None
        if isinstance(choices, list):
            pbody["choices"] = [{"value": c} if isinstance(c, str) else c for c in choices]


def parameters_it_takes(job_type: JobType, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` without the parameters ``job_type`` does not have: what a job requested under
    another version of the types file keeps when checked against this one (a restart, a runner
    whose file differs). The tool could never be given the others: ``build_argv`` goes through
    the type's own parameters."""
    return {name: value for name, value in given.items() if name in job_type.parameters}


def validate_parameters(job_type: JobType, given: Any) -> dict[str, Any]:
    """Check parameters against the type's schema; return them complete with defaults.

    Raises ParameterError naming every bad field.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ParameterError(
            [FieldError(field="parameters", code="INVALID_TYPE", message="must be an object")]
        )
    errors: list[FieldError] = []
    clean: dict[str, Any] = {}
    for name in given:
        if name not in job_type.parameters:
            errors.append(
                FieldError(
                    field=f"parameters.{name}",
                    code="UNKNOWN_PARAMETER",
                    message=f"{job_type.name} has no parameter {name!r}",
                )
            )
    for name, param in job_type.parameters.items():
        field = f"parameters.{name}"
        if name not in given or given[name] is None:
            if param.required:
                errors.append(FieldError(field=field, code="REQUIRED", message="is required"))
            elif param.default is not None:
                clean[name] = param.default
            continue
        value = given[name]
        error = _check_value(param, value)
        if error:
            errors.append(FieldError(field=field, code=error[0], message=error[1]))
        else:
            clean[name] = value
    if errors:
        raise ParameterError(errors)
    return clean


def _check_value(param: Parameter, value: Any) -> tuple[str, str] | None:
    values = {c.value for c in param.choices}
    match param.type:
        case "string":
            if not isinstance(value, str):
                return "INVALID_TYPE", "must be a string"
            limit = min(param.max_length, MAX_STRING_LENGTH)
            if len(value) > limit:
                return "TOO_LONG", f"must be at most {limit} characters"
            if "\x00" in value or "\n" in value or "\r" in value:
                return "INVALID_CHARACTER", "must not contain NUL bytes or line breaks"
            if value.startswith("-") and not param.allow_leading_dash:
                return "LEADING_DASH", "must not start with '-'"
            if param.pattern and not re.fullmatch(param.pattern, value):
                if param.pattern_help:  # the type's words first: few read a regex
                    return "PATTERN_MISMATCH", (
                        f"must be {param.pattern_help} (must match {param.pattern})"
                    )
                return "PATTERN_MISMATCH", f"must match {param.pattern}"
        case "bool":
            if not isinstance(value, bool):
                return "INVALID_TYPE", "must be true or false"
        case "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "INVALID_TYPE", "must be a whole number"
            if param.minimum is not None and value < param.minimum:
                return "OUT_OF_RANGE", f"must be at least {param.minimum}"
            if param.maximum is not None and value > param.maximum:
                return "OUT_OF_RANGE", f"must be at most {param.maximum}"
        case "enum":
            if not isinstance(value, str) or value not in values:
                return "INVALID_CHOICE", f"must be one of {', '.join(sorted(values))}"
        case "multi_enum":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "INVALID_TYPE", "must be a list of strings"
            bad = [v for v in value if v not in values]
            if bad:
                return "INVALID_CHOICE", f"{bad[0]!r} is not one of {', '.join(sorted(values))}"
            if len(set(value)) != len(value):
                return "DUPLICATE_CHOICE", "must not repeat a choice"
    return None


def build_argv(job_type: JobType, parameters: dict[str, Any]) -> list[str]:
    """The argv to exec, one element per argument: no shell ever sees a parameter."""
    argv: list[str] = []
    for element in job_type.argv:
        if element == "{python}":
            argv.append(sys.executable)
        elif element.startswith("{") and element.endswith("}") and element[1:-1] in parameters:
            argv.append(_as_arg(parameters[element[1:-1]]))
        else:
            argv.append(element)
    for name, param in job_type.parameters.items():
        if param.flag is None or name not in parameters:
            continue
        value = parameters[name]
        if param.type == "bool":
            if value:
                argv.append(param.flag)
        elif param.type == "multi_enum":
            for item in value:
                argv += [param.flag, item]
        elif param.type == "string" and value == "":
            continue
        else:
            argv += [param.flag, _as_arg(value)]
    return argv


def _as_arg(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def expand_env(value: str, environ: dict[str, str] | None = None) -> str:
    """``${VAR}`` references the runner's environment, so secrets stay out of the file."""
    env = os.environ if environ is None else environ
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), value)


def public_schema(job_type: JobType) -> dict[str, Any]:
    """What ``GET /api/job-types`` shows of a type (no argv, env or masks)."""
    return {
        "name": job_type.name,
        "title": job_type.title or job_type.name,
        "description": job_type.description,
        "lock": job_type.lock,
        "on_busy": job_type.on_busy,
        "timeout_seconds": job_type.timeout_seconds,
        "external": job_type.external,
        "heartbeat_seconds": job_type.heartbeat_seconds,
        "parameters": {
            name: {
                k: v
                for k, v in msgspec.to_builtins(p).items()
                if k not in ("flag", "allow_leading_dash")
            }
            for name, p in job_type.parameters.items()
        },
    }
