"""Which runners are alive: each writes a heartbeat (``services/runner/heartbeat.py``) to a key
of the runners bucket, whose entries expire after ``heartbeat_ttl``; ``GET /health`` reads them.
A runner that stops cleanly deletes its key; one that dies is gone within the TTL."""

from __future__ import annotations

import contextlib
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

MISSED_BEATS = 3  # a runner counts as gone after this many heartbeats did not arrive


class RunnerHeartbeat(msgspec.Struct, frozen=True):
    runner_id: str
    host: str
    pid: int
    at: datetime  # when the runner wrote this beat


def heartbeat_ttl(settings: Settings) -> float:
    """Seconds a heartbeat stays in the bucket."""
    return settings.runner_heartbeat_seconds * MISSED_BEATS


def key_of(runner_id: str) -> str:
    """A KV key for a runner id (keys take letters, digits and ``-_=.`` only)."""
    return "".join(c if c.isalnum() or c in "-_=" else "_" for c in runner_id) or "_"


async def alive_runners(js: JetStreamContext, names: Names) -> list[RunnerHeartbeat]:
    """The runners whose heartbeat has not expired, by id.

    Requests and replies only: the keys come from the bucket's stream info (its subjects), not
    from nats-py's ``kv.keys()``, which watches the bucket through an ordered consumer and a
    subscription that it does not remove when cancelled (``/health`` cuts its reads off at
    ``health_nats_timeout_seconds``: each cut left both behind)."""
    kv = await js.key_value(names.runners_bucket)
    prefix = f"$KV.{names.runners_bucket}."
    info = await js.stream_info(f"KV_{names.runners_bucket}", subjects_filter=f"{prefix}>")
    found: list[RunnerHeartbeat] = []
    for subject in sorted(info.state.subjects or {}):
        # A deleted key's subject stays (its delete marker): get says not found.
        with contextlib.suppress(NotFoundError, msgspec.MsgspecError):
            entry = await kv.get(subject.removeprefix(prefix))
            if entry.value:
                found.append(msgspec.json.decode(entry.value, type=RunnerHeartbeat))
    return sorted(found, key=lambda beat: beat.runner_id)
