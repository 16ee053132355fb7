"""One settings object for every service: a TOML config file, then environment variables.

Each field can be set in the config file (``jobrunner.toml``, top-level keys named as the fields)
or by an environment variable ``JOBRUNNER_<FIELD>`` (upper case), which wins over the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

ENV_PREFIX = "JOBRUNNER_"
DEFAULT_JOB_TYPES = Path(__file__).with_name("default_jobtypes.toml")


class SettingsError(Exception):
    pass


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Where things are
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://jobrunner@127.0.0.1:5432/jobrunner"
    prefix: str = "jobrunner"
    job_types_file: str = str(DEFAULT_JOB_TYPES)
    state_dir: str = ".jobrunner"

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000

    # Runner
    runner_id: str = ""
    max_concurrent_jobs: int = 8
    lease_ttl_seconds: float = 15.0
    line_flush_interval_ms: float = 10.0
    line_batch_max: int = 1000
    max_line_bytes: int = 65536
    # Demo tools: seconds between items; 0 runs them as fast as possible.
    demo_pace: float = 0.4

    # Event stream limits (0 means unlimited)
    stream_max_age_days: float = 0
    stream_max_bytes: int = 0
    # Read-model retention: finished jobs (and their lines) older than this leave Postgres; their
    # events stay in the stream as long as the stream limits keep them (0 keeps them forever).
    readmodel_retention_days: float = 0
    stream_replicas: int = 1

    # SSE
    sse_keepalive_seconds: float = 15.0
    sse_retry_ms: int = 3000
    # Bytes of events one SSE client may have waiting, and all clients of one API process
    # together; a client over either is disconnected and resumes by Last-Event-ID.
    sse_client_buffer_bytes: int = 8 * 1024 * 1024
    sse_total_buffer_bytes: int = 256 * 1024 * 1024
    # A client's catch-up read from JetStream that gets nothing for this long is disconnected
    # (it resumes) rather than left with a gap.
    sse_history_idle_seconds: float = 10.0

    # Access (README "Security and access")
    auth: bool = True  # off only with --no-auth on a loopback address
    max_streams_per_token: int = 32  # open SSE connections per token; more answer 429
    session_max_age_seconds: int = 43200  # browser sessions (signed cookie) last this long

    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the config file (if any), then ``JOBRUNNER_*`` variables, then explicit overrides."""
    values: dict[str, Any] = {}
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            values.update(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        # A job-types file named relative to the config file is relative to that file.
        if "job_types_file" in values:
            values["job_types_file"] = str(path.parent / values["job_types_file"])
    fields = set(Settings.__struct_fields__)
    for name in fields:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from None
