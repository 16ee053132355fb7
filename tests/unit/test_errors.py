"""API errors: what a client gets when a part behind the API fails."""

from __future__ import annotations

import msgspec
import nats.errors
import pytest
from litestar import Request

from jobrunner.services.api.errors import EXCEPTION_HANDLERS


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
