"""A stream's probe of the read models (a task beside the all-jobs stream) that ended with an
error the stream never took, as the stream ends: an unexpected error is logged at warning, not
dropped in silence (before: every error suppressed); newer read models and the stream's own
cancel are no fault, and log nothing."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from jobrunner.services.api.job_updates import ended_probe
from jobrunner.services.api.readpool import ReadModelsOfAnotherVersion


async def probe_failing_with(error: BaseException) -> asyncio.Task[None]:
    async def probe() -> None:
        raise error

    task = asyncio.ensure_future(probe())
    await asyncio.wait({task})
    return task


async def test_an_unexpected_error_of_a_probe_is_logged_at_warning() -> None:
    probing = await probe_failing_with(RuntimeError("a bug in a look-up"))
    with capture_logs() as logs:
        await ended_probe(probing)
    [logged] = logs
    assert logged["log_level"] == "warning", logged
    assert "probe" in logged["event"], logged


async def test_newer_read_models_met_by_a_probe_log_nothing() -> None:
    probing = await probe_failing_with(ReadModelsOfAnotherVersion("READ_MODELS_NEWER", "newer"))
    with capture_logs() as logs:
        await ended_probe(probing)
    assert logs == []


async def test_a_probe_cancelled_with_its_stream_logs_nothing() -> None:
    async def waiting() -> None:
        await asyncio.Event().wait()

    probing = asyncio.ensure_future(waiting())
    await asyncio.sleep(0)
    probing.cancel()
    with capture_logs() as logs:
        await ended_probe(probing)
    assert logs == []
