"""The start-up wait for JetStream (common/retry.py): what it waits out, what it raises."""

from __future__ import annotations

import pytest
import structlog
from nats.errors import NoRespondersError
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
