"""A feed writes a batch straight to each waiting viewer's connection (directwrite.py): every
line still reaches every viewer once and in order, with the stream's own writes (its start,
keep-alives, the end) around them; a viewer that stops reading is paused and cut as before."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvicorn

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.directwrite import ChunkWriter, chunk_writer
from tests.freeze import freeze, thaw
from tests.sse_client import SseStream, read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.wide_viewers import (
    CLIENT_BYTES,
    EXPECTED,
    FLOOD_LEASE_TTL,
    JOB_TYPES,
    fanout_of,
    resume,
    stall_until_cut,
    stalling_client,
    start_wide,
    texts,
)


async def start_emit(system: System, **parameters: object) -> str:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def line_texts(stream: SseStream) -> list[str]:
    return [e.json["text"] for e in stream.events if e.event == "message"]


class TestLiveViewers:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(
            settings, job_types_file=TEST_TYPES, sse_keepalive_seconds=0.5
        )

    async def test_waiting_viewers_are_written_to_straight_and_get_every_line_once(
        self, system: System
    ) -> None:
        job_id = await start_emit(system, lines=150, interval="0.01")
        path = f"/jobs/stream/{job_id}"
        async with system.client() as client:
            streams = await asyncio.gather(*(read_stream(client, path) for _ in range(10)))
        expected = [f"INFO line {i} [{i}/150]" for i in range(1, 151)]
        for stream in streams:
            assert line_texts(stream) == expected
            ids = [e.id for e in stream.events if e.id]
            assert len(ids) == len(set(ids))
            assert stream.events[-1].event == "done"
        assert fanout_of(system).direct_writes > 0

    async def test_a_batch_is_framed_once_for_every_viewer_written_to_straight(
        self, system: System, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ten viewers of one job: each hand-over's bytes, framed as an HTTP chunk, are made once
        and the same object is written to every viewer (no copy, no framing per viewer)."""
        written: list[bytes] = []
        write = ChunkWriter.write

        def recording_write(writer: ChunkWriter, chunk: bytes) -> bool:
            written.append(chunk)
            return write(writer, chunk)

        monkeypatch.setattr(ChunkWriter, "write", recording_write)
        job_id = await start_emit(system, lines=150, interval="0.01")
        path = f"/jobs/stream/{job_id}"
        async with system.client() as client:
            streams = await asyncio.gather(*(read_stream(client, path) for _ in range(10)))
        expected = [f"INFO line {i} [{i}/150]" for i in range(1, 151)]
        for stream in streams:
            assert line_texts(stream) == expected
        assert written
        # What the writer is handed is already a chunk of the response: ``<size>\r\n...\r\n``.
        for chunk in written:
            size, _, rest = chunk.partition(b"\r\n")
            assert int(size, 16) == len(rest) - 2
            assert rest.endswith(b"\r\n")
        # One object per hand-over, written to the viewers it went to: the ten viewers share
        # them (a viewer queued instead, or resuming inside a batch, may get one of its own).
        assert len({id(chunk) for chunk in written}) <= len(written) / 3

    async def test_keep_alives_and_lines_interleave_on_the_direct_path(
        self, system: System
    ) -> None:
        """Lines 1.2 s apart, keep-alives every 0.5 s: each line once, in order, between them."""
        job_id = await start_emit(system, lines=3, interval="1.2")
        async with system.client() as client:
            stream = await read_stream(client, f"/jobs/stream/{job_id}")
        assert "keep-alive" in stream.comments
        assert line_texts(stream) == [f"INFO line {i} [{i}/3]" for i in range(1, 4)]
        assert stream.events[-1].event == "done"
        assert fanout_of(system).direct_writes > 0

    async def test_viewers_leaving_mid_stream_leave_the_others_whole(self, system: System) -> None:
        """Half the viewers close their connection while lines are written straight to them."""
        job_id = await start_emit(system, lines=200, interval="0.01")
        path = f"/jobs/stream/{job_id}"
        fanout = fanout_of(system)
        async with system.client() as client:
            leaving = [read_stream(client, path, stop_after=20 + 10 * i) for i in range(5)]
            staying = [read_stream(client, path) for _ in range(5)]
            streams = await asyncio.gather(*leaving, *staying)
        expected = [f"INFO line {i} [{i}/200]" for i in range(1, 201)]
        for stream in streams[:5]:
            assert line_texts(stream) == expected[: len(line_texts(stream))]
        for stream in streams[5:]:
            assert line_texts(stream) == expected
            assert stream.events[-1].event == "done"
        assert fanout.direct_writes > 0
        async with asyncio.timeout(10):
            while fanout.clients or fanout.feeds:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.05)


class TestStalledViewer:
    @pytest.fixture
    def settings(self, settings: Settings, tmp_path: Path) -> Settings:
        types = tmp_path / "jobtypes.toml"
        types.write_text(JOB_TYPES)
        return msgspec.structs.replace(
            settings,
            job_types_file=str(types),
            sse_client_buffer_bytes=CLIENT_BYTES,
            sse_total_buffer_bytes=64 * CLIENT_BYTES,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
        )

    @pytest.mark.timeout(180)
    async def test_a_viewer_that_stops_reading_is_cut_and_resumes_with_every_line_once(
        self, system: System
    ) -> None:
        """Written to straight while its connection takes writes (how much depends on how the
        flood's lines fall into batches: a batch over 64 KiB goes the framework's way), then
        queued once it is paused, and cut by its limit as before; its reconnect gets exactly
        the rest."""
        job_id = await start_wide(system)
        path = f"/jobs/stream/{job_id}"
        fanout = fanout_of(system)
        async with stalling_client(system) as slow, system.client() as client:
            first = await stall_until_cut(slow, path, fanout)
            rest = await resume(client, path, first)
        assert not first or first[-1].event != "done"
        assert texts(first) + texts(rest) == EXPECTED
        assert rest[-1].event == "done"


class TestFramework:
    """Where a connection cannot be written to straight, every line goes through the framework."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(
            settings, job_types_file=TEST_TYPES, sse_keepalive_seconds=0.5
        )

    @pytest.fixture
    def h11(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """uvicorn serving with its h11 protocol instead of httptools'."""
        init = uvicorn.Config.__init__

        def with_h11(config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            init(config, *args, **{**kwargs, "http": "h11"})

        monkeypatch.setattr(uvicorn.Config, "__init__", with_h11)

    async def test_uvicorns_h11_protocol_gets_every_line_through_the_framework(
        self, h11: None, system: System
    ) -> None:
        job_id = await start_emit(system, lines=150, interval="0.01")
        async with system.client() as client:
            streams = await asyncio.gather(
                *(read_stream(client, f"/jobs/stream/{job_id}") for _ in range(6))
            )
        expected = [f"INFO line {i} [{i}/150]" for i in range(1, 151)]
        for stream in streams:
            assert line_texts(stream) == expected
            assert stream.events[-1].event == "done"
        assert fanout_of(system).direct_writes == 0

    async def test_a_direct_write_that_fails_loses_no_line_and_turns_direct_writes_off(
        self, system: System, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A uvicorn whose connection is not what directwrite expects, say, fails in the middle
        of a broadcast: every viewer still gets every line, once and in order."""
        writes = 0

        def failing_write(writer: ChunkWriter, body: bytes) -> bool:
            nonlocal writes
            writes += 1
            raise AttributeError("'RequestResponseCycle' object has no attribute 'flow'")

        monkeypatch.setattr(ChunkWriter, "write", failing_write)
        job_id = await start_emit(system, lines=150, interval="0.01")
        async with system.client() as client:
            streams = await asyncio.gather(
                *(read_stream(client, f"/jobs/stream/{job_id}") for _ in range(10))
            )
        expected = [f"INFO line {i} [{i}/150]" for i in range(1, 151)]
        for stream in streams:
            assert line_texts(stream) == expected
            assert stream.events[-1].event == "done"
        fanout = fanout_of(system)
        assert writes == 1
        assert not fanout.direct_enabled
        assert fanout.direct_writes == 0


def test_no_writer_without_uvicorns_httptools_cycle() -> None:
    """Another server (or none): the stream writes through the framework."""

    async def send(message: object) -> None: ...

    scope = {"type": "http", "method": "GET", "jobrunner.server_send": send}
    assert chunk_writer(scope) is None  # type: ignore[arg-type]
    assert chunk_writer({"type": "http", "method": "GET"}) is None  # type: ignore[arg-type]


class TestNatsPaused:
    @pytest.fixture
    def settings(self, settings: Settings, own_nats: EmbeddedNats) -> Settings:
        return msgspec.structs.replace(
            settings,
            nats_url=own_nats.url,
            job_types_file=TEST_TYPES,
            sse_keepalive_seconds=0.5,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
        )

    @pytest.mark.parametrize("pause", [0.3, 1.5], ids=["shorter-than-keepalive", "longer"])
    async def test_viewers_on_the_direct_path_lose_nothing_across_a_nats_pause(
        self, system: System, own_nats: EmbeddedNats, pause: float
    ) -> None:
        """NATS stopped mid-job for less and for more than the keep-alive interval (the feed's
        own timer, whose keep-alives go the stream's way while the feed writes straight)."""
        assert own_nats.proc is not None
        job_id = await start_emit(system, lines=100, interval="0.03")
        path = f"/jobs/stream/{job_id}"
        async with system.client() as client:
            viewers = [asyncio.create_task(read_stream(client, path)) for _ in range(5)]
            await asyncio.sleep(1.0)
            freeze(own_nats.proc.pid)
            try:
                await asyncio.sleep(pause)  # the fault itself lasts this long
            finally:
                thaw(own_nats.proc.pid)
            streams = await asyncio.gather(*viewers)
        expected = [f"INFO line {i} [{i}/100]" for i in range(1, 101)]
        for stream in streams:
            assert line_texts(stream) == expected
            assert stream.events[-1].event == "done"
        assert fanout_of(system).direct_writes > 0
