"""A method an address does not take: 405 with a sentence naming the methods it takes."""

from __future__ import annotations

from tests.system import System


async def test_a_405_names_the_methods_the_address_takes(system: System) -> None:
    """DELETE /api/jobs answers 405 METHOD_NOT_ALLOWED saying it takes GET and POST."""
    async with system.client() as client:
        answer = await client.delete("/api/jobs")
    assert answer.status_code == 405, answer.text
    error = answer.json()["error"]
    assert error["code"] == "METHOD_NOT_ALLOWED"
    assert error["message"].startswith("This address does not take DELETE; it takes ")
    for method in ("GET", "POST"):
        assert method in error["message"]
        assert method in answer.headers["allow"]


async def test_head_on_an_event_stream_is_refused_with_the_methods_to_use(
    system: System,
) -> None:
    """`curl -I /api/jobs/stream` answers 405 without a body, its Allow header naming GET (an
    event stream never ends; every other read route answers HEAD: test_head.py)."""
    async with system.client() as client:
        answer = await client.head("/api/jobs/stream")
    assert answer.status_code == 405
    assert answer.content == b""
    assert "GET" in answer.headers["allow"]
