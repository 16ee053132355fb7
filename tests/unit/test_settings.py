"""Settings: the config file, then JOBRUNNER_* variables, then explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrunner.common.settings import (
    DEFAULT_JOB_TYPES,
    QUEUE_ORPHAN_MIN_SECONDS,
    Settings,
    SettingsError,
    load_settings,
)

pytestmark = pytest.mark.usefixtures("no_jobrunner_environment")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobrunner.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    """With nothing configured, jobrunner uses its defaults and the bundled job types."""
    loaded = load_settings()
    assert loaded == Settings()
    assert loaded.job_types_file == str(DEFAULT_JOB_TYPES)


def test_environment_wins_over_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JOBRUNNER_* variable overrides the same key in the config file."""
    config = write_config(tmp_path, 'prefix = "fromfile"\nport = 9000\n')
    monkeypatch.setenv("JOBRUNNER_PORT", "9001")
    loaded = load_settings(config)
    assert (loaded.prefix, loaded.port) == ("fromfile", 9001)


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit override (a command-line option) beats the environment; None means not given."""
    monkeypatch.setenv("JOBRUNNER_PORT", "9001")
    monkeypatch.setenv("JOBRUNNER_HOST", "0.0.0.0")
    loaded = load_settings(port=9002, host=None)
    assert (loaded.port, loaded.host) == (9002, "0.0.0.0")


def test_config_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOBRUNNER_CONFIG names the config file when none is passed."""
    monkeypatch.setenv("JOBRUNNER_CONFIG", str(write_config(tmp_path, 'prefix = "viaenv"\n')))
    assert load_settings().prefix == "viaenv"


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("false", False), ("0", False)])
def test_environment_values_are_converted(
    monkeypatch: pytest.MonkeyPatch, raw: str, value: bool
) -> None:
    """Variables are text; they are converted to the field's type (here a bool)."""
    monkeypatch.setenv("JOBRUNNER_AUTH", raw)
    assert load_settings().auth is value


def test_job_types_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    """A relative job_types_file in the config file is found next to that file, not the cwd."""
    config = write_config(tmp_path, 'job_types_file = "types.toml"\n')
    assert load_settings(config).job_types_file == str(tmp_path / "types.toml")


def test_absolute_job_types_file_stays_as_it_is(tmp_path: Path) -> None:
    """An absolute job_types_file in the config file is used as written."""
    config = write_config(tmp_path, 'job_types_file = "/etc/jobrunner/types.toml"\n')
    assert load_settings(config).job_types_file == "/etc/jobrunner/types.toml"


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """A config file that does not exist is reported with its path."""
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_invalid_toml_config_is_reported(tmp_path: Path) -> None:
    """A config file that is not TOML is reported as such."""
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(write_config(tmp_path, "port = \n"))


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    """A misspelt key in the config file is an error, not silently ignored."""
    with pytest.raises(SettingsError, match="prot"):
        load_settings(write_config(tmp_path, "prot = 8000\n"))


def test_setting_of_the_wrong_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that is not of the field's type names the field."""
    monkeypatch.setenv("JOBRUNNER_PORT", "eighty")
    with pytest.raises(SettingsError, match="port"):
        load_settings()


def test_unreadable_config_file_is_reported(tmp_path: Path) -> None:
    """A config path that is a folder, or a file that is not UTF-8, is reported plainly."""
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(tmp_path)
    binary = tmp_path / "jobrunner.toml"
    binary.write_bytes(b"port = 1\n\xff\n")
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(binary)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("port", "-1"),
        ("port", "70000"),
        ("max_concurrent_jobs", "0"),
        ("lease_ttl_seconds", "0"),
        ("lease_ttl_seconds", "-15"),
        ("lease_ttl_seconds", "nan"),
        ("lease_ttl_seconds", "2.9"),  # below the shortest the fault suite proves
        ("line_batch_max", "0"),
        ("max_line_bytes", "0"),
        ("stream_replicas", "0"),
        ("sse_keepalive_seconds", "0"),
        ("sse_retry_ms", "-1"),
        ("max_streams_per_token", "0"),
        ("session_max_age_seconds", "0"),
        ("demo_pace", "-1"),
        ("stream_max_bytes", "-1"),
        ("log_format", "jsno"),
        ("sse_client_buffer_bytes", "0"),
        ("sse_total_buffer_bytes", "1000"),
        ("sse_history_idle_seconds", "0"),
        ("runner_heartbeat_seconds", "-5"),
        ("projector_stuck_seconds", "0"),
        ("batch_max_jobs", "0"),
        ("batch_max_jobs", "1000001"),
        ("batch_max_body_bytes", "1000"),
        ("batch_seal_timeout_seconds", "0"),
        ("idempotency_ttl_seconds", "-1"),
        ("queue_orphan_seconds", "21.9"),  # below a restart's queue write, publish and resend
        ("queue_orphan_seconds", "nan"),
        ("nats_silence_seconds", "0.9"),  # a loop stalled a second is no silent NATS
        ("stop_seconds", "0.5"),
        ("stop_seconds", "15.5"),  # waits past its deadline need the margin to the 20 s grace
        ("stream_read_timeout_seconds", "0"),
        ("replay_postgres_answer_seconds", "0"),
        ("replay_postgres_answer_seconds", "-30"),
    ],
)
def test_value_no_service_can_honour_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str
) -> None:
    """A setting out of its range (no job slots, a lease of 0 s, port -1) is refused, naming it."""
    monkeypatch.setenv(f"JOBRUNNER_{field.upper()}", raw)
    with pytest.raises(SettingsError, match=field):
        load_settings()


def test_zero_means_unlimited_where_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream limits and retention of 0 (unlimited) and a demo pace of 0 are accepted."""
    for field in ("stream_max_age_days", "stream_max_bytes", "readmodel_retention_days"):
        monkeypatch.setenv(f"JOBRUNNER_{field.upper()}", "0")
    monkeypatch.setenv("JOBRUNNER_DEMO_PACE", "0")
    assert load_settings().stream_max_bytes == 0


def test_queue_orphan_seconds_takes_its_lowest_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lowest dead-entry age allowed (the API's publish timeout plus a margin) is taken."""
    monkeypatch.setenv("JOBRUNNER_QUEUE_ORPHAN_SECONDS", str(QUEUE_ORPHAN_MIN_SECONDS))
    assert load_settings().queue_orphan_seconds == QUEUE_ORPHAN_MIN_SECONDS
    assert Settings().queue_orphan_seconds == 30.0


def test_a_config_file_key_that_is_no_setting_is_named_with_the_closest_one(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "lease_ttl_secods = 30\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config)
    assert str(raised.value) == (
        f"config file {config} has 'lease_ttl_secods', which is no setting; "
        "did you mean 'lease_ttl_seconds'?"
    )


def test_a_retired_setting_in_an_older_config_file_still_loads(tmp_path: Path) -> None:
    config = write_config(tmp_path, "line_flush_interval_ms = 100\nport = 8123\n")
    assert load_settings(config).port == 8123


def test_nats_silence_seconds_takes_its_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NATS silence bound of 1 s, the least, is accepted."""
    monkeypatch.setenv("JOBRUNNER_NATS_SILENCE_SECONDS", "1")
    assert load_settings().nats_silence_seconds == 1.0


def test_stop_seconds_takes_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop of 1 s and one of 15 s (the most: the supervisor kills at 20 s) are accepted."""
    for raw in ("1", "15"):
        monkeypatch.setenv("JOBRUNNER_STOP_SECONDS", raw)
        assert load_settings().stop_seconds == float(raw)


@pytest.mark.parametrize(("read", "keepalive"), [("15", None), ("20", None), ("3", "2")])
def test_a_stream_read_bound_not_below_the_keepalive_is_refused(
    monkeypatch: pytest.MonkeyPatch, read: str, keepalive: str | None
) -> None:
    """A stream waiting on a read sends no keep-alive: its bound must be below the interval."""
    monkeypatch.setenv("JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS", read)
    if keepalive is not None:
        monkeypatch.setenv("JOBRUNNER_SSE_KEEPALIVE_SECONDS", keepalive)
    refusal = rf"^JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS='{read}' is not below sse_keepalive_seconds"
    with pytest.raises(SettingsError, match=refusal):
        load_settings()


def test_a_stream_read_bound_below_the_keepalive_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just below the keep-alive's interval; 5 s by default, above health's 1 s."""
    monkeypatch.setenv("JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS", "14.9")
    assert load_settings().stream_read_timeout_seconds == 14.9
    assert Settings().stream_read_timeout_seconds == 5.0


@pytest.mark.parametrize(("keepalive", "bound"), [("5", 2.5), ("2", 1.0), ("10", 5.0), ("15", 5.0)])
def test_a_stream_read_bound_not_configured_stays_below_a_short_keepalive(
    monkeypatch: pytest.MonkeyPatch, keepalive: str, bound: float
) -> None:
    """An operator who shortened the keep-alive to 5 s or less and never set the stream's read
    bound still starts after upgrading: the bound is half the keep-alive's interval, at most
    5 s (was: refused, 5 s not below the interval)."""
    monkeypatch.delenv("JOBRUNNER_STREAM_READ_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setenv("JOBRUNNER_SSE_KEEPALIVE_SECONDS", keepalive)
    assert load_settings().stream_read_timeout_seconds == bound
