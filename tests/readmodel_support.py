"""The projector's promise, checked from outside: the live read models equal what a fresh
``jobrunner replay`` of the same stream builds (every table the projector writes: jobs with
their search columns, lines, webhook deliveries, batches with their counts, artifacts, the
checkpoint, events set aside)."""

from __future__ import annotations

from jobrunner.common.settings import Settings
from jobrunner.services.projector.replay import ReplayMismatch, replay


async def replay_differences(settings: Settings) -> dict[str, list[str]]:
    """Rebuild the read models from the stream into a schema of their own in the same Postgres
    and compare them row by row with the live ones; returns the differing keys per table (empty
    when they are equal). Run once the projector has caught up (or is stopped): the replay
    rebuilds up to the live checkpoint and compares there."""
    try:
        report = await replay(settings)
    except ReplayMismatch as mismatch:
        return mismatch.differences
    return report.differences
