"""Job types: loading the TOML file, checking parameters, building argv, expanding ${VAR}."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.jobtypes import (
    MAX_STRING_LENGTH,
    JobType,
    JobTypeConfigError,
    ParameterError,
    build_argv,
    expand_env,
    load_job_types,
    public_schema,
    validate_parameters,
)
from jobrunner.common.settings import DEFAULT_JOB_TYPES

EXAMPLE = """
[job_types.search]
title = "Search"
argv = ["{python}", "-m", "tool", "{query}"]
lock = "sheet"

[job_types.search.parameters.query]
type = "string"
required = true
pattern = "^[a-z ]*$"

[job_types.search.parameters.plz]
type = "string"
flag = "--plz"
default = ""

[job_types.search.parameters.dry_run]
type = "bool"
flag = "--dry-run"

[job_types.search.parameters.engine]
type = "enum"
flag = "--engine"
choices = ["ddg", { value = "brave", label = "Brave" }]
default = "ddg"

[job_types.search.parameters.fields]
type = "multi_enum"
flag = "--field"
choices = ["name", "email", "phone"]

[job_types.search.parameters.limit]
type = "integer"
flag = "--limit"
minimum = 1
maximum = 100
"""


def load_text(tmp_path: Path, text: str) -> dict[str, JobType]:
    path = tmp_path / "jobtypes.toml"
    path.write_text(text)
    return load_job_types(path)


@pytest.fixture
def search(tmp_path: Path) -> JobType:
    return load_text(tmp_path, EXAMPLE)["search"]


def codes(exc: ParameterError) -> dict[str, str]:
    return {e.field: e.code for e in exc.errors}


# --- loading


def test_default_job_types_load() -> None:
    """The four job types that ship with jobrunner load without error."""
    types = load_job_types(DEFAULT_JOB_TYPES)
    assert {"scraper", "enrich_email", "enrich_search", "blacklist_sync"} <= set(types)


def test_plain_string_choices_become_choices_with_value(search: JobType) -> None:
    """A choice written as a bare string is a choice with that value and no label."""
    choices = search.parameters["engine"].choices
    assert [(c.value, c.label) for c in choices] == [("ddg", ""), ("brave", "Brave")]


def test_missing_job_types_file_is_named(tmp_path: Path) -> None:
    """A job-types file that does not exist is reported with its path."""
    with pytest.raises(JobTypeConfigError, match="does not exist"):
        load_job_types(tmp_path / "nope.toml")


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    """A job-types file that is not TOML says so instead of a traceback."""
    with pytest.raises(JobTypeConfigError, match="not valid TOML"):
        load_text(tmp_path, "[job_types.x\n")


def test_file_without_job_types_is_refused(tmp_path: Path) -> None:
    """A file that defines no job type is refused: an empty product is a mistake."""
    with pytest.raises(JobTypeConfigError, match="defines no"):
        load_text(tmp_path, "title = 'x'\n")


@pytest.mark.parametrize("name", ["Search", "1search", "se-arch", "x" * 65])
def test_job_type_name_must_be_snake_case(tmp_path: Path, name: str) -> None:
    """A job type whose name is not snake_case is refused with its name."""
    with pytest.raises(JobTypeConfigError, match="snake_case"):
        load_text(tmp_path, f'[job_types."{name}"]\nargv = ["x"]\n')


def test_unknown_field_in_a_job_type_is_refused(tmp_path: Path) -> None:
    """A typo in a job type's keys is an error, not silently ignored."""
    with pytest.raises(JobTypeConfigError, match="argvv"):
        load_text(tmp_path, '[job_types.x]\nargvv = ["x"]\ncallable = "a:b"\n')


@pytest.mark.parametrize(
    "body", ["", 'argv = ["x"]\ncallable = "pkg.mod:run"\n'], ids=["neither", "both"]
)
def test_job_type_needs_exactly_one_of_argv_or_callable(tmp_path: Path, body: str) -> None:
    """A job type must say how it runs: an argv or a callable, not both and not neither."""
    with pytest.raises(JobTypeConfigError, match="either an argv or a callable"):
        load_text(tmp_path, f"[job_types.x]\ntitle = 't'\n{body}")


def test_callable_must_name_module_and_function(tmp_path: Path) -> None:
    """A callable that is not 'package.module:function' is refused."""
    with pytest.raises(JobTypeConfigError, match=r"package\.module:function"):
        load_text(tmp_path, '[job_types.x]\ncallable = "pkg.mod.run"\n')


def test_bad_progress_pattern_is_refused(tmp_path: Path) -> None:
    """A progress_pattern that is not a regular expression is refused at load."""
    with pytest.raises(JobTypeConfigError, match="bad progress_pattern"):
        load_text(tmp_path, '[job_types.x]\nargv = ["x"]\nprogress_pattern = "(["\n')


@pytest.mark.parametrize(
    ("field", "needs"),
    [("progress_pattern", "(?P<current>...) or (?P<percent>...)"), ("level_pattern", "level")],
)
def test_patterns_need_their_named_groups(tmp_path: Path, field: str, needs: str) -> None:
    """A progress or level pattern without the group it is read by is refused, naming it."""
    with pytest.raises(JobTypeConfigError, match=f"needs a group named .*{needs[-12:-5]}"):
        load_text(tmp_path, f'[job_types.x]\nargv = ["x"]\n{field} = "[0-9]+"\n')


def test_bad_parameter_pattern_is_refused(tmp_path: Path) -> None:
    """A parameter pattern that is not a regular expression is refused at load, naming it."""
    text = '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "string"\npattern = "("'
    with pytest.raises(JobTypeConfigError, match="parameter 'p': bad pattern"):
        load_text(tmp_path, text)


def test_enum_without_choices_is_refused(tmp_path: Path) -> None:
    """An enum parameter with nothing to choose from is refused at load."""
    text = '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "enum"\n'
    with pytest.raises(JobTypeConfigError, match="needs choices"):
        load_text(tmp_path, text)


# --- checking parameters


def test_defaults_fill_in_missing_parameters(search: JobType) -> None:
    """Parameters left out take the type's defaults; those without a default stay out."""
    assert validate_parameters(search, {"query": "a b"}) == {
        "query": "a b",
        "plz": "",
        "engine": "ddg",
    }


def test_none_parameters_mean_none_given(search: JobType) -> None:
    """A request without parameters is checked like an empty object."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(search, None)
    assert codes(exc.value) == {"parameters.query": "REQUIRED"}


@pytest.mark.parametrize("given_value", [[], "query=x", 3])
def test_parameters_must_be_an_object(search: JobType, given_value: Any) -> None:
    """Parameters that are not a JSON object get INVALID_TYPE on the field 'parameters'."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(search, given_value)
    assert codes(exc.value) == {"parameters": "INVALID_TYPE"}


def test_every_bad_field_is_named_at_once(search: JobType) -> None:
    """One answer names every bad field, each with its own code."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(
            search,
            {"querry": "x", "dry_run": "yes", "engine": "bing", "limit": 0, "fields": ["x"]},
        )
    assert codes(exc.value) == {
        "parameters.querry": "UNKNOWN_PARAMETER",
        "parameters.query": "REQUIRED",
        "parameters.dry_run": "INVALID_TYPE",
        "parameters.engine": "INVALID_CHOICE",
        "parameters.limit": "OUT_OF_RANGE",
        "parameters.fields": "INVALID_CHOICE",
    }
    assert all(e.message for e in exc.value.errors)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (5, "INVALID_TYPE"),
        ("ABC", "PATTERN_MISMATCH"),
        ("-rf", "LEADING_DASH"),
        ("a\nb", "INVALID_CHARACTER"),
        ("a\rb", "INVALID_CHARACTER"),
        ("a\x00b", "INVALID_CHARACTER"),
        ("a" * 257, "TOO_LONG"),
    ],
)
def test_string_parameter_errors(search: JobType, value: Any, code: str) -> None:
    """A bad string parameter gets the code that says what is wrong with it."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(search, {"query": value})
    assert codes(exc.value) == {"parameters.query": code}


@pytest.mark.parametrize(
    ("value", "code"),
    [(True, "INVALID_TYPE"), (1.5, "INVALID_TYPE"), ("5", "INVALID_TYPE"), (101, "OUT_OF_RANGE")],
)
def test_integer_parameter_errors(search: JobType, value: Any, code: str) -> None:
    """An integer parameter takes whole numbers in its range, and not true/false."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(search, {"query": "x", "limit": value})
    assert codes(exc.value) == {"parameters.limit": code}


@pytest.mark.parametrize(
    ("value", "code"),
    [("name", "INVALID_TYPE"), ([1], "INVALID_TYPE"), (["name", "name"], "DUPLICATE_CHOICE")],
)
def test_multi_enum_parameter_errors(search: JobType, value: Any, code: str) -> None:
    """A multi-choice parameter takes a list of distinct choices."""
    with pytest.raises(ParameterError) as exc:
        validate_parameters(search, {"query": "x", "fields": value})
    assert codes(exc.value) == {"parameters.fields": code}


def test_too_long_message_names_the_limit_that_applies(tmp_path: Path) -> None:
    """A string over the hard limit is told the hard limit, not a larger configured one."""
    text = (
        '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "string"\n'
        f"max_length = {MAX_STRING_LENGTH * 2}\n"
    )
    job_type = load_text(tmp_path, text)["x"]
    with pytest.raises(ParameterError) as exc:
        validate_parameters(job_type, {"p": "a" * (MAX_STRING_LENGTH + 1)})
    assert str(MAX_STRING_LENGTH) in exc.value.errors[0].message


ENRICH_SEARCH = load_job_types(DEFAULT_JOB_TYPES)["enrich_search"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_any_json_parameters_are_accepted_or_named(given_params: dict[str, Any]) -> None:
    """Whatever JSON a client sends as parameters, it is either accepted or every error is named."""
    job_type = ENRICH_SEARCH
    try:
        clean = validate_parameters(job_type, given_params)
    except ParameterError as exc:
        errors = exc.errors
    else:
        assert set(clean) <= set(job_type.parameters)
        assert build_argv(job_type, clean)[0] == sys.executable
        return
    assert errors
    assert all(e.field.startswith("parameters") and e.code and e.message for e in errors)


# --- argv


def test_argv_is_template_then_flags_in_declared_order(search: JobType) -> None:
    """The argv is the template with values in place, then each given flag in declared order."""
    params = validate_parameters(
        search,
        {"query": "a b", "dry_run": True, "fields": ["email", "name"], "limit": 7, "plz": "123"},
    )
    assert build_argv(search, params) == [
        sys.executable,
        "-m",
        "tool",
        "a b",
        "--plz",
        "123",
        "--dry-run",
        "--engine",
        "ddg",
        "--field",
        "email",
        "--field",
        "name",
        "--limit",
        "7",
    ]


def test_false_flag_and_empty_string_are_left_out(search: JobType) -> None:
    """A bool flag that is false and a string flag that is empty add nothing to argv."""
    params = {"query": "x", "dry_run": False, "plz": "", "engine": "ddg"}
    assert build_argv(search, params)[4:] == ["--engine", "ddg"]


@settings(deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00\n\r"), max_size=50))
def test_a_parameter_is_always_one_argument(query: str) -> None:
    """Whatever a string parameter holds (spaces, quotes, ;, $), the tool gets one argument."""
    job_type = JobType(name="t", argv=["tool", "{query}"], parameters={})
    assert build_argv(job_type, {"query": query}) == ["tool", query]


# --- environment and public schema


def test_env_references_are_expanded() -> None:
    """${VAR} takes the runner's environment; an unset variable becomes empty."""
    assert expand_env("key=${API_KEY};x=${UNSET}", {"API_KEY": "s3cret"}) == "key=s3cret;x="


def test_env_expansion_is_not_recursive() -> None:
    """A variable whose value looks like ${OTHER} is not expanded a second time."""
    assert expand_env("${A}", {"A": "${B}", "B": "no"}) == "${B}"


def test_public_schema_hides_how_the_tool_is_run(tmp_path: Path) -> None:
    """GET /api/job-types shows parameters but not argv, env, masks or flags."""
    text = (
        '[job_types.x]\nargv = ["tool"]\nenv = { TOKEN = "${T}" }\nmask = ["secret"]\n'
        '[job_types.x.parameters.p]\ntype = "string"\nflag = "--p"\nlabel = "P"\n'
    )
    schema = public_schema(load_text(tmp_path, text)["x"])
    assert schema["title"] == "x"
    assert not {"argv", "env", "mask"} & set(schema)
    assert schema["parameters"]["p"]["label"] == "P"
    assert "flag" not in schema["parameters"]["p"]


# --- any file at all


def toml_value(value: Any) -> str:
    """A value as inline TOML (enough for generated files: no null, no floats)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
KEYS = st.sampled_from(
    ["argv", "callable", "parameters", "type", "choices", "flag", "pattern", "title", "p", "x"]
)
TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-5, 5) | TEXT | st.sampled_from(["string", "enum", "a:b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(deadline=None)
@given(TOML_VALUES)
def test_any_job_types_file_loads_or_says_why(
    tmp_path_factory: pytest.TempPathFactory, value: Any
) -> None:
    """Whatever shape a job-types file has, it loads or a JobTypeConfigError says what is wrong."""
    path = tmp_path_factory.mktemp("types") / "jobtypes.toml"
    path.write_text(f"job_types = {toml_value(value)}\n")
    try:
        load_job_types(path)
    except JobTypeConfigError as exc:
        message = str(exc)
    else:
        return
    assert message


@pytest.mark.parametrize(
    "text",
    [
        "job_types = 5\n",
        "[job_types]\nx = 5\n",
        '[job_types.x]\nargv = ["x"]\nparameters = 5\n',
        '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters]\np = 5\n',
        '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "enum"\nchoices = "ab"\n',
        '[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "enum"\nchoices = [1]\n',
    ],
    ids=["types", "type", "parameters", "parameter", "choices", "choice"],
)
def test_wrong_shapes_in_a_job_types_file_are_reported(tmp_path: Path, text: str) -> None:
    """A table where a value belongs (or the reverse) is a JobTypeConfigError, not a traceback."""
    with pytest.raises(JobTypeConfigError):
        load_text(tmp_path, text)


def test_unreadable_job_types_file_is_reported(tmp_path: Path) -> None:
    """A job-types path that is a folder, or a file that is not text, is reported plainly."""
    with pytest.raises(JobTypeConfigError, match="cannot be read"):
        load_job_types(tmp_path)
    binary = tmp_path / "types.toml"
    binary.write_bytes(b"\xff\xfe[job_types]")
    with pytest.raises(JobTypeConfigError, match="cannot be read"):
        load_job_types(binary)


@pytest.mark.parametrize(
    ("param", "words"),
    [
        ('type = "integer"\nminimum = 1\ndefault = 0', "default"),
        ('type = "integer"\ndefault = "ten"', "default"),
        ('type = "enum"\nchoices = ["a"]\ndefault = "b"', "default"),
        ('type = "string"\npattern = "^[0-9]+$"\ndefault = "abc"', "default"),
    ],
    ids=["below-minimum", "not-a-number", "not-a-choice", "pattern"],
)
def test_default_that_its_own_parameter_refuses_is_refused_at_load(
    tmp_path: Path, param: str, words: str
) -> None:
    """A default the parameter's own rules refuse is a config error, not a bad argv at run time."""
    text = f'[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\n{param}\n'
    with pytest.raises(JobTypeConfigError, match=f"parameter 'p': {words}"):
        load_text(tmp_path, text)


def test_placeholder_for_an_optional_parameter_without_default_is_refused(tmp_path: Path) -> None:
    """argv naming {p} for a parameter that may be left out is refused: no tool gets '{p}'."""
    text = '[job_types.x]\nargv = ["tool", "{p}"]\n[job_types.x.parameters.p]\ntype = "string"\n'
    with pytest.raises(JobTypeConfigError, match=r"\{p\}"):
        load_text(tmp_path, text)


def test_placeholder_for_a_multi_choice_is_refused(tmp_path: Path) -> None:
    """A list cannot be one argument: argv naming a multi-choice parameter is refused."""
    text = (
        '[job_types.x]\nargv = ["tool", "{p}"]\n[job_types.x.parameters.p]\n'
        'type = "multi_enum"\nrequired = true\nchoices = ["a", "b"]\n'
    )
    with pytest.raises(JobTypeConfigError, match=r"\{p\}"):
        load_text(tmp_path, text)


def test_external_job_type_loads_without_argv(tmp_path: Path) -> None:
    """``external = true`` is a job type run by nobody here: no argv or callable needed."""
    types = load_text(
        tmp_path,
        "[job_types.doc]\nexternal = true\nheartbeat_seconds = 30\nlock = 'sheet'\n"
        "[job_types.doc.parameters.file]\ntype = 'string'\n",
    )
    assert types["doc"].external
    assert public_schema(types["doc"])["external"] is True
    assert public_schema(types["doc"])["heartbeat_seconds"] == 30


@pytest.mark.parametrize(
    "body",
    ['argv = ["x"]', 'callable = "pkg.mod:run"', 'cwd = "/srv"', 'env = { A = "b" }'],
    ids=["argv", "callable", "cwd", "env"],
)
def test_external_job_type_takes_nothing_to_run(tmp_path: Path, body: str) -> None:
    """An external type with an argv, callable, cwd or env is refused, naming the field."""
    field = body.split(" ")[0]
    with pytest.raises(JobTypeConfigError, match=f"is external .* takes no {field}"):
        load_text(tmp_path, f"[job_types.x]\nexternal = true\n{body}\n")


@pytest.mark.parametrize("heartbeat", ["0", "-1", "7200"])
def test_heartbeat_must_be_positive_and_within_the_timeout(tmp_path: Path, heartbeat: str) -> None:
    """heartbeat_seconds of 0, below 0 or above timeout_seconds is refused."""
    with pytest.raises(JobTypeConfigError, match="heartbeat_seconds must be above 0"):
        load_text(
            tmp_path,
            f"[job_types.x]\nexternal = true\ntimeout_seconds = 3600\n"
            f"heartbeat_seconds = {heartbeat}\n",
        )


def test_heartbeat_is_for_external_types_only(tmp_path: Path) -> None:
    """A tool type with heartbeat_seconds is refused: a tool's silence is fine."""
    with pytest.raises(JobTypeConfigError, match="for external job types only"):
        load_text(tmp_path, '[job_types.x]\nargv = ["x"]\nheartbeat_seconds = 5\n')


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    """timeout_seconds of 0 is refused at load, not found out when a job never runs."""
    with pytest.raises(JobTypeConfigError, match="timeout_seconds must be above 0"):
        load_text(tmp_path, '[job_types.x]\nargv = ["x"]\ntimeout_seconds = 0\n')


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ('pattern_help = "five digits"', "pattern_help needs a pattern"),
        ('pattern = "^[0-9]+$"\npattern_help = 5', "pattern_help"),
    ],
    ids=["without-pattern", "not-a-string"],
)
def test_bad_pattern_help_is_refused(tmp_path: Path, lines: str, says: str) -> None:
    """Words for a pattern without a pattern, or that are not a string, are refused at load,
    naming the parameter. (Before, words without a pattern loaded and were never shown.)"""
    text = f'[job_types.x]\nargv = ["x"]\n[job_types.x.parameters.p]\ntype = "string"\n{lines}\n'
    with pytest.raises(JobTypeConfigError, match=says) as raised:
        load_text(tmp_path, text)
    assert "'p'" in str(raised.value) or "parameters.p" in str(raised.value), raised.value
