"""The exit code of any command the server refuses: a server failing on the request (a 500, or
any 5xx but a server away: 502, 503, 504) exits 70 for every command, not only ``logs
--follow``; a refusal of the request itself (4xx) exits 2. (Before, a 500 on ``jobrunner
submit`` or ``status`` exited 2, as if the user's arguments were wrong.)"""

from __future__ import annotations

import httpx
import pytest

from jobrunner.terminal.connection import EXIT_SERVER_ERROR, EXIT_USAGE, Api, Target

API = Api(Target("http://127.0.0.1:1", None, "--url"))


def answer(status: int) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": "SOME_CODE", "message": "What the server said."}}
    )


@pytest.mark.parametrize("status", [500, 501, 505, 507, 599])
def test_a_server_error_exits_70_with_its_sentence(status: int) -> None:
    refusal = API.refused(answer(status))
    assert refusal.exit_code == EXIT_SERVER_ERROR
    assert "What the server said. (SOME_CODE)" in str(refusal)


@pytest.mark.parametrize("status", [400, 404, 409, 422, 429])
def test_a_refused_request_exits_2(status: int) -> None:
    assert API.refused(answer(status)).exit_code == EXIT_USAGE
