"""Which runners are alive: each writes a heartbeat (``services/runner/heartbeat.py``) to a key
of the runners bucket, whose entries expire after ``heartbeat_ttl``; ``GET /health`` reads them.
A runner that stops cleanly deletes its key; one that dies is gone within the TTL."""

from __future__ import annotations

import contextlib
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError, NotFoundError

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
    """The runners whose heartbeat has not expired, by id."""
    kv = await js.key_value(names.runners_bucket)
    found: list[RunnerHeartbeat] = []
    with contextlib.suppress(NoKeysError):
        for key in await kv.keys():
            with contextlib.suppress(NotFoundError, msgspec.MsgspecError):
                entry = await kv.get(key)
                if entry.value:
                    found.append(msgspec.json.decode(entry.value, type=RunnerHeartbeat))
    return sorted(found, key=lambda beat: beat.runner_id)
