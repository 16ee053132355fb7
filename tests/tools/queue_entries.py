"""A lock's queue as the queue-orphan tests set it up: an entry written straight into the slots
bucket (``queued_at`` as the API would stamp it), the job's request stored or not."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from jobrunner.common import eventstore
from jobrunner.common.slots import QueueEntry, queue_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

HOUR = 3600.0


async def put_entry(kv: KeyValue, lock: str, job_id: str, queued_at: float) -> None:
    entry = QueueEntry(job_id=job_id, job_type="t", queued_at=queued_at)
    await kv.put(queue_key(lock, job_id), msgspec.json.encode(entry))


async def store_request(js: JetStreamContext, names: Names, lock: str, job_id: str) -> None:
    await eventstore.publish(js, names, events.JobRequested(job_id=job_id, job_type="t", lock=lock))


async def is_queued(kv: KeyValue, lock: str, job_id: str) -> bool:
    try:
        return bool((await kv.get(queue_key(lock, job_id))).value)
    except KeyNotFoundError:
        return False
