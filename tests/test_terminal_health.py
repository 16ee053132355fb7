"""``jobrunner health`` against a real server: the status, the API instance that answered and
each problem's code and sentence for a person, and an exit code for a script: 0 ok, 1 degraded,
2 unavailable, 69 no jobrunner answering (as for every other command)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze
from tests.system import System
from tests.tools.nats_silence import thaw
from tests.tools.terminal_client import Run, jobrunner


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings, nats_url=own_nats.url, auth=True, health_nats_timeout_seconds=0.5
    )


async def health_until(system: System, status: str) -> dict[str, Any]:
    """/health polled until its status is ``status`` (30 s at most); its body."""
    async with system.client(token=None) as client, asyncio.timeout(30):
        while True:
            body = (await client.get("/health")).json()
            if body["status"] == status:
                return dict(body)
            await asyncio.sleep(0.05)


def problem_lines(run: Run) -> list[str]:
    return [line.strip() for line in run.out.splitlines()[1:]]


async def test_a_healthy_server_is_ok_and_exit_0(system: System) -> None:
    body = await health_until(system, "ok")
    run = await jobrunner(system, "health")
    assert run.code == 0, run.err
    assert run.out.splitlines() == [f"{system.base_url}: ok (instance {body['instance']})"]


async def test_no_runner_is_degraded_with_its_sentence_and_exit_1(system: System) -> None:
    await system.stop_service("runner")
    body = await health_until(system, "degraded")
    run = await jobrunner(system, "health")
    assert run.code == 1, run.err
    assert run.out.splitlines()[0] == f"{system.base_url}: degraded (instance {body['instance']})"
    problem = next(p for p in body["problems"] if p["code"] == "NO_RUNNER")
    assert f"NO_RUNNER: {problem['message']}" in problem_lines(run)


async def test_nats_frozen_is_unavailable_with_its_sentence_and_exit_2(
    system: System, own_nats: EmbeddedNats
) -> None:
    await health_until(system, "ok")
    assert own_nats.proc is not None
    freeze(own_nats.proc.pid)
    try:
        run = await jobrunner(system, "health")
        as_json = await jobrunner(system, "health", "--json")
    finally:
        thaw(own_nats)
    assert run.code == 2, run.err
    # --json: the API's own answer, for a script that wants the figures.
    assert as_json.code == 2, as_json.err
    body = json.loads(as_json.out)
    assert (
        run.out.splitlines()[0] == f"{system.base_url}: unavailable (instance {body['instance']})"
    )
    assert any(line.startswith("NATS_TIMEOUT: NATS did not answer") for line in problem_lines(run))
    assert body["status"] == "unavailable"
    assert "NATS_TIMEOUT" in [p["code"] for p in body["problems"]]


async def test_no_server_at_the_address_is_a_sentence_and_exit_69(system: System) -> None:
    """No answer is 69, as for every other command: not 2, a server's ``unavailable``."""
    run = await jobrunner(system, "health", "--url", "http://127.0.0.1:9")
    assert run.code == 69
    assert run.out == ""
    assert "cannot reach jobrunner at http://127.0.0.1:9" in run.err
    assert "Traceback" not in run.err


async def test_a_proxys_error_page_instead_of_the_report_is_a_sentence_and_exit_69(
    system: System,
) -> None:
    """A proxy in front of a stopped API answers 502 with a page of its own: no jobrunner
    answered, so 69 (not 2, which says jobrunner answered ``unavailable``)."""

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        page = b"<html><body>502 Bad Gateway</body></html>"
        writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(page), page)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        run = await jobrunner(system, "health", "--url", f"http://127.0.0.1:{port}")
    assert run.code == 69, (run.out, run.err)
    assert run.out == ""
    assert "answered HTTP 502 without jobrunner's health report" in run.err
    assert "Traceback" not in run.err
