"""The retry policy: transient NATS errors are waited out, permanent ones raise at once."""

from __future__ import annotations

import time

import nats.errors
import nats.js.errors
import pytest

from jobrunner.common import eventstore, retry
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.journal import JobJournal


@pytest.mark.parametrize(
    "error",
    [
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.NoStreamResponseError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.OutboundBufferLimitError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="JetStream not available"),
    ],
    ids=type,
)
async def test_transient_errors_are_retried_until_the_operation_succeeds(
    error: Exception,
) -> None:
    """An outage-like error twice, then success: the caller gets the result, no error."""
    calls = 0

    async def operation() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise error
        return 42

    assert await retry.until_done(operation, "a test message") == 42
    assert calls == 3


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (nats.errors.MaxPayloadError(), "MESSAGE_TOO_LARGE"),
        (nats.js.errors.BadRequestError(code=400, description="bad"), "BAD_REQUEST"),
        (nats.errors.AuthorizationError(), "PERMISSION_DENIED"),
        (nats.js.errors.APIError(code=403, description="denied"), "PERMISSION_DENIED"),
        (TypeError("Encoding objects of type object is unsupported"), "UNENCODABLE"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
async def test_permanent_errors_raise_at_once_with_a_code(error: Exception, code: str) -> None:
    """A refusal that can never pass is raised on the first try, with a code and a sentence."""
    calls = 0

    async def operation() -> int:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(retry.PublishRefused) as refused:
        await retry.until_done(operation, "a test message")
    assert calls == 1
    assert refused.value.code == code
    assert "a test message" in str(refused.value)


async def test_event_over_max_payload_is_refused_not_retried(settings: Settings) -> None:
    """Publishing an event larger than the server takes fails at once as MESSAGE_TOO_LARGE
    (the runner's publish of a job's events, through the connection's ack inbox)."""
    nc = await eventstore.connect(settings, "test-retry")
    try:
        js = nc.jetstream()
        names = Names(settings.prefix)
        await eventstore.ensure_topology(js, names, settings)
        too_large = events.StatusChanged(
            job_id="j1",
            status=events.JobStatus.COMPLETED,
            result={"summary": "x" * (nc.max_payload + 1)},
        )
        with pytest.raises(retry.PublishRefused) as refused:
            await JobJournal(nc, js, names, "runner-test").publish(too_large)
    finally:
        await eventstore.close(nc)
    assert refused.value.code == "MESSAGE_TOO_LARGE"


def test_restart_delays_double_up_to_a_cap() -> None:
    """A service that keeps dying is restarted after 0.5, 1, 2, 4, 8, then every 10 seconds."""
    delays = [retry.delay_after(n, first=0.5, longest=10.0) for n in range(1, 9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


async def test_the_not_found_grace_starts_anew_after_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start step meets "stream not found", then an outage longer than the grace, then "not
    found" once more as the node catches up: that is waited for too, not raised at once (the
    grace counts from the first "not found" since the last other error)."""
    monkeypatch.setattr(retry, "NOT_FOUND_GRACE_SECONDS", 0.3)
    not_found = nats.js.errors.NotFoundError(code=404, err_code=10059, description="not found")
    began = time.monotonic()
    answers: list[Exception | None] = [not_found]
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if answers:
            error = answers.pop(0)
            if error is not None:
                raise error
            return "ready"
        if time.monotonic() - began < 0.6:  # the outage, past the grace
            raise nats.errors.TimeoutError()
        answers.append(None)
        raise not_found

    assert await retry.until_jetstream_ready(operation, "a test step") == "ready"
    assert calls >= 4
