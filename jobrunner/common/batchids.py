"""The ids of a batch's events and jobs, derived from the batch id.

A retried submission (same ``Idempotency-Key``) re-publishes exactly the same ids, so JetStream
stores each event once (``Nats-Msg-Id``) and a consumer that meets an id again knows it already
has it. Nothing here reads a clock or a random source except ``new_batch_id``.
"""

from __future__ import annotations

import hashlib
import uuid


def new_batch_id() -> str:
    return uuid.uuid4().hex


def job_id(batch_id: str, index: int) -> str:
    """The id of the job at ``index`` (from 0) of the batch."""
    return hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def job_requested_event_id(job_id: str) -> str:
    return f"{job_id}-requested"


def batch_requested_event_id(batch_id: str) -> str:
    return f"{batch_id}-requested"


def batch_sealed_event_id(batch_id: str) -> str:
    return f"{batch_id}-sealed"
