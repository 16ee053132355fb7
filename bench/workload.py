"""A synthetic history: ``jobs`` finished jobs of ten events each (requested, running, six line
batches, progress, the end), published to JetStream as fast as it acknowledges them. It feeds the
replay measurement and gives the read measurements 100,000 jobs to filter."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names

JOB_TYPES = ("scraper", "enrich_email", "enrich_search", "blacklist_sync")
EVENTS_PER_JOB = 10
BIG_JOB_LINES = 20_000  # one job with a long log, for paging
# "00" first: the history's ids sort before any id the product gives a job started later (a
# UUIDv7, the time first: "01..." until 2039), as a real history's would, so a flood after it
# appends at the end of log_lines' key. 13 characters, as before, so the events keep their size.
BIG_JOB_ID = "00bench000000"


def history(jobs: int, seed: int = 6) -> Iterator[events.Event]:
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(jobs):
        job_id = f"00bench{n:06d}"
        at = base + timedelta(seconds=n * 7)
        job_type = JOB_TYPES[n % len(JOB_TYPES)]
        yield events.JobRequested(
            job_id=job_id,
            occurred_at=at,
            job_type=job_type,
            parameters={"plz": f"{rng.randrange(10000, 99999)}", "limit": rng.randrange(1, 500)},
            requested_by=f"user{n % 17}",
        )
        yield events.StatusChanged(
            job_id=job_id, occurred_at=at + timedelta(seconds=1), status=JobStatus.RUNNING
        )
        per_batch = BIG_JOB_LINES // 6 if n == 0 else 2
        seq = 0
        for b in range(6):
            lines = []
            for _ in range(per_batch):
                seq += 1
                lines.append(
                    events.LogLine(
                        seq,
                        "stdout",
                        "INFO",
                        at + timedelta(seconds=1 + b),
                        f"INFO [{seq}/{per_batch * 6}] processed record {rng.randrange(10**9)}",
                    )
                )
            yield events.LineLogged(
                job_id=job_id, occurred_at=at + timedelta(seconds=1 + b), lines=lines
            )
        yield events.ProgressReported(
            job_id=job_id, occurred_at=at + timedelta(seconds=7), current=6, total=6, percent=100
        )
        roll = rng.random()
        end = at + timedelta(seconds=8)
        if roll < 0.8:
            yield events.StatusChanged(
                job_id=job_id,
                occurred_at=end,
                event_id=events.terminal_event_id(job_id),
                status=JobStatus.COMPLETED,
                exit_code=0,
            )
        elif roll < 0.95:
            yield events.StatusChanged(
                job_id=job_id,
                occurred_at=end,
                event_id=events.terminal_event_id(job_id),
                status=JobStatus.FAILED,
                exit_code=2,
                error=ErrorInfo(code=ErrorCode.EXIT_NONZERO, message="exit 2"),
            )
        else:
            yield events.StatusChanged(
                job_id=job_id,
                occurred_at=end,
                event_id=events.terminal_event_id(job_id),
                status=JobStatus.CANCELLED,
                cancelled_by="bench",
            )


async def publish_history(js: JetStreamContext, names: Names, jobs: int) -> dict[str, float]:
    """Publish with a window of unacknowledged messages; returns count, seconds, last seq."""
    window = 2000
    pending = []
    count = 0
    last = 0
    t0 = time.monotonic()
    for event in history(jobs):
        pending.append(
            await js.publish_async(
                names.subject(event), codec.encode(event), headers=codec.headers(event)
            )
        )
        count += 1
        if len(pending) >= window:
            for future in pending:
                last = max(last, (await future).seq)
            pending.clear()
    for future in pending:
        last = max(last, (await future).seq)
    return {"events": count, "seconds": round(time.monotonic() - t0, 2), "last_seq": last}
