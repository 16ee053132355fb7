"""The start-up wait for JetStream (common/retry.py): what it waits out, what it raises."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import structlog
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from jobrunner.common import retry


def api_error(code: int, err_code: int, description: str) -> APIError:
    cls = BadRequestError if code == 400 else ServiceUnavailableError if code == 503 else APIError
    return cls(code=code, err_code=err_code, description=description)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(api_error(400, 10005, "no suitable peers for placement"), id="no-peers"),
        pytest.param(api_error(503, 10008, "JetStream system temporarily unavailable"), id="10008"),
        pytest.param(api_error(503, 10023, "insufficient resources"), id="insufficient"),
        pytest.param(NoRespondersError(), id="no-responders"),
        pytest.param(TimeoutError(), id="timeout"),
    ],
)
def test_a_forming_cluster_is_waited_for(exc: Exception) -> None:
    """Refusals of a cluster short of nodes, and every transient error, are waited out."""
    assert retry.is_forming(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(api_error(400, 10074, "replicas > 1 not supported"), id="not-clustered"),
        pytest.param(api_error(400, 10058, "stream name already in use"), id="other-config"),
        pytest.param(api_error(403, 10000, "permission denied"), id="permission"),
    ],
)
def test_a_bad_configuration_is_not_waited_for(exc: Exception) -> None:
    """A refusal no cluster change can cure (a single server asked for replicas) is not."""
    assert not retry.is_forming(exc)


async def test_start_up_step_waits_and_says_what_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step refused while the cluster forms is tried again, with a log line naming it."""
    monkeypatch.setattr(retry, "delay_after", lambda failures: 0.0)
    answers: list[Exception | str] = [NoRespondersError(), api_error(503, 10008, "x"), "ok"]

    async def step() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with structlog.testing.capture_logs() as logs:
        assert await retry.until_jetstream_ready(step, "the token bucket") == "ok"
    waits = [e for e in logs if e["event"] == "waiting for JetStream"]
    assert waits[0]["waiting_for"] == "the token bucket"
    assert [e["event"] for e in logs][-1] == "JetStream ready"


async def test_start_up_step_refused_for_good_raises_at_once() -> None:
    """A permanent refusal reaches the caller on the first try."""
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise api_error(400, 10074, "replicas > 1 not supported in non-clustered mode")

    with pytest.raises(BadRequestError):
        await retry.until_jetstream_ready(step, "the event stream")
    assert calls == 1


async def test_a_retry_ends_on_a_cancel_the_operation_swallowed() -> None:
    """A cancel caught inside a try (as nats-py's flush does) ends the retrying at the next
    retry: it went on for ever, and a process's exit waited on it."""
    tries = 0
    swallowed = asyncio.Event()

    async def publish() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed.set()  # nats-py's _flush_pending: caught, and the call returns
        raise ConnectionClosedError  # transient: retried (the stop closed the connection)

    retrying = asyncio.ensure_future(retry.until_done(publish, "an event"))
    while tries == 0:  # noqa: ASYNC110 - the first try started
        await asyncio.sleep(0)
    retrying.cancel()
    await asyncio.wait({retrying}, timeout=30)
    assert retrying.cancelled()
    assert swallowed.is_set()
    assert tries == 1


class FailsTwice:
    """A publish whose first two tries fail as a dropped connection does; the third stores."""

    def __init__(self) -> None:
        self.tries = 0

    async def __call__(self) -> str:
        self.tries += 1
        if self.tries < 3:
            raise ConnectionClosedError
        return "stored"


async def test_a_retry_goes_on_without_a_cancel() -> None:
    """Without a cancel the transient failures are retried until the operation succeeds."""
    publish = FailsTwice()
    assert await retry.until_done(publish, "an event") == "stored"
    assert publish.tries == 3


async def test_a_start_steps_wait_ends_on_a_cancel_the_step_swallowed() -> None:
    """The start's wait for JetStream, too: a cancel caught inside a step ends the waiting."""
    tries = 0

    async def declare() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            # nats-py's _flush_pending: caught, and the call returns
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
        raise ConnectionClosedError  # transient: waited out

    waiting = asyncio.ensure_future(retry.until_jetstream_ready(declare, "the stream"))
    while tries == 0:  # noqa: ASYNC110 - the first try started
        await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=30)
    assert waiting.cancelled()
    assert tries == 1


async def test_a_retry_log_line_names_what_is_retried() -> None:
    """Each retry's log line says what is retried (stamina alone says "<context block>")."""
    with structlog.testing.capture_logs() as logs:
        assert await retry.until_done(FailsTwice(), "job 7's StatusChanged") == "stored"
    retries = [e for e in logs if e["event"] == "stamina.retry_scheduled"]
    assert [e["retrying"] for e in retries] == ["job 7's StatusChanged"] * 2
    assert [e["retry_num"] for e in retries] == [1, 2]
    assert all("ConnectionClosedError" in e["caused_by"] for e in retries)
