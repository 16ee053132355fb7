"""Audit (session 19): viewers that misbehave at the socket while a job floods, written to
straight by the feed (directwrite.py). Every reading viewer gets every line once, in order;
once they are all gone the process holds nothing for them (clients, feeds, buffers, tasks)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common.settings import Settings
from jobrunner.services.api.sse import ResumePoint
from tests.sse_client import SseStream, iter_events, read_stream
from tests.system import System
from tests.tools.emit_jobs import emit_job
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.waiting import until
from tests.tools.wide_viewers import (
    CLIENT_BYTES,
    FLOOD_LEASE_TTL,
    fanout_of,
    read_to_the_end,
    stalling_client,
    stream_texts,
)
from tests.tools.wide_viewers import EXPECTED as WIDE_EXPECTED
from tests.tools.wide_viewers import JOB_TYPES as WIDE_TYPES

pytestmark = pytest.mark.timeout(180)

LINES = 3000
CHURN = int(os.environ.get("AUDIT_CHURN", "300"))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        job_types_file=TEST_TYPES,
        sse_keepalive_seconds=0.5,
        max_streams_per_token=10_000,
    )


async def raw_viewer(system: System, path: str, how: str, rng: random.Random) -> None:
    """A viewer at the socket: it half-closes, drops the connection in the middle of a chunk
    (after reading a few bytes of it), or sends a hostile Last-Event-ID and leaves."""
    headers = f"Authorization: Bearer {system.admin_token}\r\n"
    if how == "hostile-id":
        hostile = rng.choice(["-5", "1:-2", "x" * 5000, "9" * 4000, "1:" + "9" * 30, "٣", " 2 "])
        headers += f"Last-Event-ID: {hostile}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    await writer.drain()
    try:
        status = await reader.readline()
        # A hostile id may be refused (400 LAST_EVENT_ID_AHEAD), nothing else.
        assert status.split()[1] == b"200" or how == "hostile-id", status
        if how == "half-close":
            writer.write_eof()
            await reader.read(rng.randint(1, 4096))
        else:
            await reader.read(rng.randint(100, 3000))  # a piece of a chunk, then gone
        await asyncio.sleep(rng.random() * 0.3)
    finally:
        sock = writer.get_extra_info("socket")
        if how == "reset" and sock is not None:
            # Gone with a RST (unread data in its receive queue), not a FIN.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        writer.close()


def causes(error: BaseException) -> list[str]:
    """An error and what caused it, down to the socket's (httpx's ReadError says nothing)."""
    chain: list[str] = []
    while error is not None and len(chain) < 5:
        chain.append(repr(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return chain


def feed_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sse-feed-")]


async def test_viewers_joining_and_leaving_badly_during_a_flood_leave_the_readers_whole(
    system: System,
) -> None:
    job_id = await emit_job(system, lines=LINES, interval="0.0005")
    path = f"/jobs/stream/{job_id}"
    fanout = fanout_of(system)
    rng = random.Random(19)
    # A connection per viewer (httpx's pool would queue the churn behind 100 of them).
    async with system.client(limits=httpx.Limits(max_connections=None)) as client:
        readers = [asyncio.ensure_future(read_stream(client, path)) for _ in range(4)]
        churn = []
        for i in range(CHURN):
            how = rng.choice(["half-close", "mid-chunk", "reset", "hostile-id", "httpx"])
            if how == "httpx":
                churn.append(read_stream(client, path, stop_after=rng.randint(1, 200)))
            else:
                churn.append(raw_viewer(system, path, how, rng))
            if i % 20 == 0:
                await asyncio.sleep(0.02)
        results = await asyncio.gather(*churn, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, [causes(e) for e in errors[:3]]
        streams = await asyncio.gather(*readers)
    expected = [f"INFO line {i} [{i}/{LINES}]" for i in range(1, LINES + 1)]
    for stream in streams:
        assert stream_texts(stream) == expected
        assert stream.events[-1].event == "done"
    await until(
        lambda: not fanout.clients and not fanout.feeds, "every client and feed gone", seconds=30
    )
    assert fanout.buffered_bytes == 0
    assert fanout.recorded_bytes == 0
    # A feed forgotten with its last client finishes its cancellation (its reader's
    # unsubscribe) a few loop turns later.
    await until(lambda: not feed_tasks(), "every feed task ended", seconds=10)


@given(st.text(max_size=60))
def test_any_last_event_id_parses_or_is_ignored(raw: str) -> None:
    point = ResumePoint.parse(raw)
    if point is not None:
        assert point.stream_seq >= 0
        assert point.line_index is None or point.line_index >= 0
        assert point.next_seq >= point.stream_seq


@pytest.mark.parametrize(
    "hostile",
    ["99999999999999999999999", "18446744073709551616:0", "1" * 4300, "-1", "1:x"],
    ids=["past-u64", "u64-with-index", "4300-digits", "negative", "bad-index"],
)
async def test_a_hostile_last_event_id_is_answered_not_failed(system: System, hostile: str) -> None:
    job_id = await emit_job(system, lines=3)
    async with system.client() as client:
        response = await client.get(f"/jobs/stream/{job_id}", headers={"Last-Event-ID": hostile})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "LAST_EVENT_ID_AHEAD"
    else:
        assert "event: done" in response.text


class TestStalledViewersThatVanish:
    @pytest.fixture
    def settings(self, settings: Settings, tmp_path: Path) -> Settings:
        types = tmp_path / "jobtypes.toml"
        types.write_text(WIDE_TYPES)
        return msgspec.structs.replace(
            settings,
            job_types_file=str(types),
            sse_client_buffer_bytes=CLIENT_BYTES,
            sse_total_buffer_bytes=64 * CLIENT_BYTES,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
            max_streams_per_token=10_000,
        )

    async def test_viewers_that_never_read_then_reset_leave_a_reader_whole_and_nothing_held(
        self, system: System
    ) -> None:
        """Twenty viewers with tiny receive buffers send their request and read nothing (their
        connections' writes pause, their backlogs pass the limit, they are cut while the
        server waits to write to them), one viewer reads the flood; then the twenty vanish
        with a RST, the job ended meanwhile. The reader gets every line once; nothing of the
        twenty stays in the process."""
        async with system.client() as client:
            response = await client.post("/api/jobs", json={"job_type": "wide"})
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
        path = f"/jobs/stream/{job_id}"
        fanout = fanout_of(system)
        stalled = []
        for _ in range(20):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", system.port))
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {system.admin_token}\r\n\r\n"
            )
            await asyncio.get_running_loop().sock_sendall(sock, request.encode())
            stalled.append(sock)
        try:
            await until(lambda: fanout.clients >= 20, "20 clients connected", seconds=30)
            async with system.client() as client:
                events = await read_to_the_end(client, path)
            assert [e.json["text"] for e in events if e.event == "message"] == WIDE_EXPECTED
            await until(lambda: fanout.clients_cut >= 20, "20 clients cut")
        finally:
            for sock in stalled:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        await until(
            lambda: not fanout.clients and not fanout.feeds,
            "every client and feed gone",
            seconds=30,
        )
        assert fanout.buffered_bytes == 0
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("sse-feed-")] == []


class TestEndWhileAViewerIsPaused:
    @pytest.fixture
    def settings(self, settings: Settings, tmp_path: Path) -> Settings:
        types = tmp_path / "jobtypes.toml"
        types.write_text(WIDE_TYPES)
        return msgspec.structs.replace(
            settings,
            job_types_file=str(types),
            sse_client_buffer_bytes=32 * CLIENT_BYTES,  # the whole flood: never cut here
            sse_total_buffer_bytes=64 * CLIENT_BYTES,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
        )

    async def test_a_job_that_ends_while_a_viewers_writes_wait_reaches_it_whole(
        self, system: System
    ) -> None:
        """A viewer reads nothing while the flood is written to it (its connection's writes
        pause, its backlog waits in the API) and the job ends; then it reads: every line once,
        in order, and the end, once, last."""
        async with system.client() as client:
            response = await client.post("/api/jobs", json={"job_type": "wide"})
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
        path = f"/jobs/stream/{job_id}"
        fanout = fanout_of(system)
        async with (
            stalling_client(system) as slow,
            system.client() as client,
            slow.stream("GET", path) as response,
        ):
            assert response.status_code == 200

            async def ended() -> bool:
                job = (await client.get(f"/api/jobs/{job_id}")).json()
                return bool(job["status"] == "completed")

            async with asyncio.timeout(90):
                while not (await ended() and fanout.buffered_bytes > 0):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            events = [event async for event in iter_events(response, SseStream())]
        assert [e.json["text"] for e in events if e.event == "message"] == WIDE_EXPECTED
        assert [e.event for e in events].count("done") == 1
        assert events[-1].event == "done"
