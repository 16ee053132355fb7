"""A value no service can honour (out of range, of the wrong type, no choice there is) is
refused in the user's words: the variable or the config file's key it was written as, the
value as written, what the setting takes, with an example."""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner import cli
from jobrunner.common import exitcodes
from jobrunner.common.settings import (
    BOUNDS,
    CAPPED,
    LONGEST_SECONDS,
    Settings,
    SettingsError,
    capped_settings,
    load_settings,
    setting_shape,
)

NUMERIC = sorted(
    field.name for field in msgspec.structs.fields(Settings) if field.type in (int, float)
)


pytestmark = pytest.mark.usefixtures("no_jobrunner_environment")


def refusal(**variables: str) -> str:
    """The sentence ``load_settings`` refuses these variables with."""
    with pytest.MonkeyPatch.context() as environment:
        for name, value in variables.items():
            environment.setenv(name, value)
        with pytest.raises(SettingsError) as raised:
            load_settings()
    return str(raised.value)


@pytest.mark.parametrize("written", ["inf", "-inf", "nan", "1e308", "1e400", "9223372037"])
def test_a_lease_that_cannot_work_is_refused_naming_the_variable(written: str) -> None:
    """JOBRUNNER_LEASE_TTL_SECONDS=inf (was accepted: no upper limit) and its like."""
    assert refusal(JOBRUNNER_LEASE_TTL_SECONDS=written) == (
        f"JOBRUNNER_LEASE_TTL_SECONDS={written!r} is out of range: lease_ttl_seconds takes a "
        "number of seconds from 3 to 2305843009, such as 15"
    )


def test_a_value_below_its_range_is_refused_naming_the_variable() -> None:
    """Was: "lease_ttl_seconds = 0.0 is outside its range", the setting's name only."""
    assert refusal(JOBRUNNER_LEASE_TTL_SECONDS="0") == (
        "JOBRUNNER_LEASE_TTL_SECONDS='0' is out of range: lease_ttl_seconds takes a number of "
        "seconds from 3 to 2305843009, such as 15"
    )


def test_a_config_file_value_out_of_range_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "jobrunner.toml"
    config.write_text("max_concurrent_jobs = 0\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config)
    assert str(raised.value) == (
        f"config file {config} has max_concurrent_jobs = 0, which is out of range: "
        "max_concurrent_jobs takes a whole number from 1 to 10000, such as 8"
    )


def test_a_config_file_value_too_large_for_a_number_names_the_file_and_key(
    tmp_path: Path,
) -> None:
    """msgspec's own "Number out of range" named no key."""
    config = tmp_path / "jobrunner.toml"
    config.write_text("port = 99999999999999999999999\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config)
    assert str(raised.value).startswith(
        f"config file {config} has port = 99999999999999999999999, which is out of range: "
        "port takes a whole number from 0 to 65535"
    )


def test_the_environment_is_named_when_it_overrides_a_good_file_value(tmp_path: Path) -> None:
    """The refusal names where the value that counts came from."""
    config = tmp_path / "jobrunner.toml"
    config.write_text("stop_seconds = 10\n")
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("JOBRUNNER_STOP_SECONDS", "20")
        with pytest.raises(SettingsError) as raised:
            load_settings(config)
    assert str(raised.value).startswith("JOBRUNNER_STOP_SECONDS='20' is out of range: ")


def test_a_command_line_value_out_of_range_is_named_as_its_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``jobrunner up --port 70000``: the flag the operator typed, not the setting's name."""
    assert cli.main(["up", "--port", "70000"]) == exitcodes.CONFIG
    assert capsys.readouterr().err == (
        "jobrunner: --port 70000 is out of range: port takes a whole number from 0 to 65535, "
        "such as 8000\n"
    )


def test_a_value_given_in_code_out_of_range_is_named_as_the_setting() -> None:
    """An override with no flag has no variable or file: the setting and the value."""
    with pytest.raises(SettingsError) as raised:
        load_settings(port=70000)
    assert str(raised.value) == (
        "port = 70000 is out of range: port takes a whole number from 0 to 65535, such as 8000"
    )


def test_a_toml_date_is_told_as_the_file_wrote_it(tmp_path: Path) -> None:
    config = tmp_path / "jobrunner.toml"
    config.write_text("stop_seconds = 1979-05-27\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config)
    assert str(raised.value).startswith(
        f"config file {config} has stop_seconds = 1979-05-27, which is not a number: "
    )


@pytest.mark.parametrize(
    ("variable", "written", "used"),
    [
        ("JOBRUNNER_SESSION_MAX_AGE_SECONDS", "31536000000", 400 * 86400),
        ("JOBRUNNER_LINE_BATCH_MAX", "2000000", 1048576),
        ("JOBRUNNER_MAX_CONCURRENT_JOBS", "20000", 10000),
    ],
)
def test_a_value_that_worked_before_its_bound_is_taken_as_the_bound_with_a_warning(
    variable: str, written: str, used: int
) -> None:
    """An upgrade stops no service that ran: the bound is used, and the start says so naming
    the variable, the value and what is used instead (README, Upgrading; the command's own
    warning: tests/test_configuration_refusals.py)."""
    name = variable.removeprefix("JOBRUNNER_").lower()
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(variable, written)
        loaded = load_settings()
        assert getattr(loaded, name) == used
        assert capped_settings(loaded) == [
            f"{variable}={written!r} is above the largest value there is: {used} is used "
            f"instead ({CAPPED[name]}; README, Upgrading)"
        ]


def test_a_log_format_there_is_not_is_named_with_the_formats_there_are() -> None:
    assert refusal(JOBRUNNER_LOG_FORMAT="jsno") == (
        "JOBRUNNER_LOG_FORMAT='jsno' is not a format there is: log_format takes one of auto, "
        "json, console"
    )


def test_a_log_level_there_is_not_is_named_with_the_levels_there_are() -> None:
    """Was taken for info: JOBRUNNER_LOG_LEVEL=debgu gave no debug lines, and no word why."""
    assert refusal(JOBRUNNER_LOG_LEVEL="debgu") == (
        "JOBRUNNER_LOG_LEVEL='debgu' is not a level there is: log_level takes one of debug, "
        "info, warning, error, critical"
    )


@pytest.mark.parametrize("level", ["notset", "WARN", "fatal"])
def test_pythons_level_names_beyond_the_five_are_refused(level: str) -> None:
    """Taken silently before (Python knows them); README names five levels, and only those."""
    assert refusal(JOBRUNNER_LOG_LEVEL=level).startswith(
        f"JOBRUNNER_LOG_LEVEL={level!r} is not a level there is: log_level takes one of debug, "
    )


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error", "CRITICAL"])
def test_a_log_level_is_taken_in_any_case(level: str) -> None:
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("JOBRUNNER_LOG_LEVEL", level)
        assert load_settings().log_level == level


def test_a_metrics_address_that_is_not_host_and_port_names_the_variable() -> None:
    assert refusal(JOBRUNNER_METRICS_ADDRESS="9101") == (
        "JOBRUNNER_METRICS_ADDRESS='9101' is not host:port: metrics_address takes host:port, "
        "such as 127.0.0.1:9101"
    )


def test_a_stream_read_bound_over_the_keepalive_names_both_sources(tmp_path: Path) -> None:
    config = tmp_path / "jobrunner.toml"
    config.write_text("sse_keepalive_seconds = 4\n")
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS", "4")
        with pytest.raises(SettingsError) as raised:
            load_settings(config)
    assert str(raised.value).startswith(
        "JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS='4' is not below sse_keepalive_seconds = 4 "
        f"(config file {config}): "
    )


def test_a_projector_dead_bound_beyond_linux_keepalive_idle_is_refused() -> None:
    """Its keepalive probes start after half of it, which Linux takes up to 32767 s: one more
    second than 65535 made the projector's every connection fail (setsockopt: EINVAL)."""
    assert refusal(JOBRUNNER_PROJECTOR_POSTGRES_DEAD_SECONDS="65536") == (
        "JOBRUNNER_PROJECTOR_POSTGRES_DEAD_SECONDS='65536' is out of range: "
        "projector_postgres_dead_seconds takes a number of seconds from 0.001 to 65535, "
        "such as 30"
    )


def test_every_numeric_setting_has_finite_bounds_holding_its_default() -> None:
    """A new numeric setting must say what it takes, or inf would be accepted again."""
    assert set(BOUNDS) == set(NUMERIC)
    for name, bounds in BOUNDS.items():
        assert math.isfinite(bounds.low), name
        assert math.isfinite(bounds.high), name
        default = getattr(Settings(), name)
        assert bounds.holds(default), name


@pytest.mark.parametrize("name", NUMERIC)
def test_each_numeric_setting_takes_its_bounds_and_refuses_just_beyond(name: str) -> None:
    """The ends of a range are taken (but an "above" low end); a step beyond is refused."""
    bounds = BOUNDS[name]
    variable = f"JOBRUNNER_{name.upper()}"
    step = 1 if _is_int(name) else bounds.low / 2 or 0.5
    taken = [bounds.high, bounds.low] + ([0] if bounds.zero_too else [])
    for value in taken:
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv(variable, _written(value, name))
            if name == "stream_read_timeout_seconds":  # which must be below the keep-alive
                environment.setenv("JOBRUNNER_SSE_KEEPALIVE_SECONDS", str(LONGEST_SECONDS))
            assert getattr(load_settings(), name) == value
    refused = [bounds.low - step]
    if name not in CAPPED:  # a value above a capped setting's bound is taken as the bound
        refused.append(bounds.high + step)
    for value in refused:
        if bounds.zero_too and value == 0:
            continue
        sentence = refusal(**{variable: _written(value, name)})
        assert sentence.startswith(f"{variable}={_written(value, name)!r} is out of range: ")


def _is_int(name: str) -> bool:
    return setting_shape(name).type is int


def _written(value: float, name: str) -> str:
    return str(int(value)) if _is_int(name) or float(value).is_integer() else repr(value)


# What an environment can hold: no NUL, no lone surrogate.
VARIABLE_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"))


@settings(deadline=None)  # a loaded machine: see conftest
@given(st.sampled_from(NUMERIC), VARIABLE_TEXT)
def test_any_text_for_a_numeric_variable_is_refused_by_name_or_taken_in_range(
    name: str, text: str
) -> None:
    """Whatever an operator writes: a sentence naming the variable, or a value within the
    setting's bounds, finite; never a traceback."""
    variable = f"JOBRUNNER_{name.upper()}"
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(variable, text)
        value, refused = loaded(name, None)
    if refused is not None:
        assert refused.startswith(f"{variable}={text!r} "), refused
    else:
        assert math.isfinite(value)
        assert BOUNDS[name].holds(value)


def loaded(name: str, config: Path | None) -> tuple[float, str | None]:
    """The setting's value as loaded, or the sentence it was refused with."""
    try:
        return getattr(load_settings(config), name), None
    except SettingsError as refused:
        return math.nan, str(refused)


NUMBER_CHARACTERS = string.ascii_letters + string.digits + " .+-_"


@settings(deadline=None)  # a loaded machine: see conftest
@given(
    name=st.sampled_from(NUMERIC),
    value=st.integers() | st.floats() | st.booleans() | st.text(NUMBER_CHARACTERS, max_size=8),
)
def test_any_config_file_value_for_a_numeric_setting_is_refused_by_key_or_in_range(
    name: str, value: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The config file's numbers include what TOML writes (inf, nan, integers past int64)."""
    config = tmp_path_factory.mktemp("config") / "jobrunner.toml"
    if isinstance(value, bool):
        written = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        written = str(value)  # inf, -inf, nan: TOML's words
    elif isinstance(value, str):
        written = msgspec.json.encode(value).decode()
    else:
        written = repr(value)
    config.write_text(f"{name} = {written}\n")
    taken, refused = loaded(name, config)
    if refused is not None:
        assert refused.startswith(f"config file {config} has {name} = "), refused
    else:
        assert math.isfinite(taken)
        assert BOUNDS[name].holds(taken)


@pytest.mark.parametrize("written", ["0", "-5", "0.5", "3601", "nan"])
def test_an_upload_window_that_cannot_work_is_refused_naming_the_variable(written: str) -> None:
    """The artifact upload window: none, negative, under a second (shorter than a loaded
    machine's pause between two chunks), or longer than the fence's hour."""
    assert refusal(JOBRUNNER_ARTIFACT_UPLOAD_WINDOW_SECONDS=written) == (
        f"JOBRUNNER_ARTIFACT_UPLOAD_WINDOW_SECONDS={written!r} is out of range: "
        "artifact_upload_window_seconds takes a number of seconds from 1 to 3600, such as 80"
    )


def test_an_upload_window_is_taken_from_the_environment() -> None:
    """A short window (as the fault suite sets it) is the one the settings hold."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("JOBRUNNER_ARTIFACT_UPLOAD_WINDOW_SECONDS", "4")
        assert load_settings().artifact_upload_window_seconds == 4.0
