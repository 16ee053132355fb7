"""API errors: what a client gets when a part behind the API fails."""

from __future__ import annotations

import msgspec
import nats.errors
import pytest
from litestar import Request, Response, get

from jobrunner.services.api.errors import EXCEPTION_HANDLERS, try_again_later
from tests.tools.one_route_api import answer_to_get


def request() -> Request:  # type: ignore[type-arg]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/jobs/j1/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
    }
    return Request(scope)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [nats.errors.TimeoutError(), nats.errors.NoServersError(), nats.errors.ConnectionClosedError()],
)
def test_nats_not_answering_is_a_503_to_retry_not_a_500(error: Exception) -> None:
    """NATS busy or away: the client is told to try again shortly, with a code to act on."""
    handler = next(h for kind, h in EXCEPTION_HANDLERS.items() if isinstance(error, kind))
    response = handler(request(), error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = msgspec.json.decode(msgspec.json.encode(response.content))
    assert body["error"]["code"] == "EVENT_STORE_UNAVAILABLE"


@pytest.mark.parametrize("media_type", ["application/json", "text/event-stream"])
async def test_try_again_later_is_a_503_with_its_code_sentence_and_retry_after(
    media_type: str,
) -> None:
    """A client told to try again later gets 503, the code to act on, the sentence, what else
    the refusal names, and how many seconds to wait, whatever the address's own type."""

    @get("/refused", media_type=media_type)
    async def refused() -> str:
        raise try_again_later(
            "EVENT_STORE_UNAVAILABLE", "Send it again shortly.", retry_after=3, job_id="j1"
        )

    response = await answer_to_get(refused)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/json"
    assert msgspec.json.decode(response.content) == {
        "error": {
            "code": "EVENT_STORE_UNAVAILABLE",
            "message": "Send it again shortly.",
            "job_id": "j1",
        }
    }


async def test_try_again_later_answered_before_a_stream_route_runs_is_json() -> None:
    """A refusal answered before the route runs (the read-model gate's) on a live stream's
    address is the same JSON 503, not a 500 from a body text/event-stream cannot carry."""

    async def refuse(_: Request) -> Response:  # type: ignore[type-arg]
        return try_again_later("READ_MODELS_NEWER", "Upgrade this API.", retry_after=5).response()

    @get("/stream", media_type="text/event-stream", before_request=refuse)
    async def stream() -> str:
        return "data: never\n\n"

    response = await answer_to_get(stream)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert msgspec.json.decode(response.content)["error"]["code"] == "READ_MODELS_NEWER"


def test_try_again_later_without_retry_after_sends_no_header() -> None:
    """A refusal that may be sent again at once names no wait (IDEMPOTENCY_UNAVAILABLE)."""
    error = try_again_later("IDEMPOTENCY_UNAVAILABLE", "Send the request again.", retry_after=None)
    response = error.response()
    assert response.status_code == 503
    assert "retry-after" not in {name.lower() for name in response.headers}
