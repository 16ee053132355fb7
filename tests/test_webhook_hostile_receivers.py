"""Receivers that misbehave below HTTP: a raw TCP server that reads the POST, then answers a byte
at a time (each byte well inside the read timeout, the whole far past it), or answers 200 and
closes in the middle of the body. The notifier's attempt must end within its timeouts and be
recorded as the README says, whatever the receiver does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import bind_free_port
from tests.system import System
from tests.webhook_support import settled, start_job, webhook_log, webhook_settings

# webhook_timeout_seconds is 2 s (webhook_settings): a byte every 0.3 s never trips a per-read
# timeout, and the drip lasts as long as the test.
DRIP_EVERY = 0.3

Answer = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return webhook_settings(settings)


@pytest.fixture
async def notifying(system: System) -> System:
    await system.start_notifier()
    return system


class RawReceiver:
    """Counts the requests it read; ``answer(writer, n)`` writes (or drips) the n-th answer."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.listener = bind_free_port()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.requests += 1
            await self.answer(writer, self.requests)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the notifier gave up on this connection: what the test wants
        finally:
            self.handlers.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def raw_receiver(answer: Answer) -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver(answer)
    server = await asyncio.start_server(receiver.handle, sock=receiver.listener)
    try:
        yield receiver
    finally:
        server.close()
        for handler in list(receiver.handlers):  # a drip lasts as long as it is let
            handler.cancel()
        await asyncio.gather(*receiver.handlers, return_exceptions=True)
        await server.wait_closed()


async def drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(DRIP_EVERY)


async def drip_status_line_for_ever(writer: asyncio.StreamWriter, n: int) -> None:
    if n > 1:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return
    await drip(writer, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000)


async def drip_body_for_ever(writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    await writer.drain()
    await drip(writer, b"x" * 100_000)


async def close_mid_body(writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part of it")
    await writer.drain()


async def test_receiver_dripping_its_status_line_times_out_and_is_retried(
    notifying: System,
) -> None:
    """An answer that never completes, a byte at a time inside the read timeout: the attempt is
    WEBHOOK_TIMEOUT (README: no answer within webhook_timeout_seconds) and the retry delivers.
    Before the fix the first attempt lasted as long as the receiver dripped: no attempt was ever
    recorded and the job's delivery (and its other webhooks) waited for ever."""
    async with raw_receiver(drip_status_line_for_ever) as receiver:
        job_id = await start_job(notifying, {"url": receiver.url})
        log = await webhook_log(notifying, job_id, settled)
    assert [(a["attempt"], a["outcome"]) for a in log["items"]] == [
        (1, "retrying"),
        (2, "delivered"),
    ]
    assert log["items"][0]["error"]["code"] == "WEBHOOK_TIMEOUT"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(drip_body_for_ever, id="body-dripped-for-ever"),
        pytest.param(close_mid_body, id="closed-mid-body"),
    ],
)
async def test_receiver_that_answered_200_is_delivered_whatever_its_body_does(
    notifying: System, answer: Answer
) -> None:
    """The status line said 200: the attempt is delivered once, not held by a body that never
    ends nor retried (a second POST of a delivered webhook) because the body broke off."""
    async with raw_receiver(answer) as receiver:
        job_id = await start_job(notifying, {"url": receiver.url})
        log = await webhook_log(notifying, job_id, settled)
        requests = receiver.requests
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in log["items"]] == [
        (1, "delivered", 200)
    ]
    assert requests == 1
