"""The bench's SSE clients in C count what the Python clients count on a real job's stream, and
find gaps, duplicates, split frames, ends without ``done`` and refusals in crafted streams."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.nativetools import NativeTool, compile_sseclients, python_sseclients
from bench.sseclients import SseClients, Stream, StreamResult, StreamsRefused, follow
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.emit_jobs import emit_job
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.scripted_sse import DONE, Answer, ScriptedSse, chunk, line_frame, split_at

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")


@pytest.fixture(name="settings")
def emit_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


@pytest.fixture(scope="module")
def c_clients(tmp_path_factory: pytest.TempPathFactory) -> NativeTool:
    tool = compile_sseclients(tmp_path_factory.mktemp("cache"))
    assert tool.kind == "C", tool.note
    return tool


@pytest.fixture(params=["C", "Python"])
def clients(request: pytest.FixtureRequest) -> NativeTool:
    """Each test with this fixture runs with the C clients and with the Python ones."""
    if request.param == "Python":
        return python_sseclients("the test's")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    tool: NativeTool = request.getfixturevalue("c_clients")
    return tool


async def follow_one(tool: NativeTool, server: ScriptedSse, stream: Stream) -> StreamResult:
    results, _ = await follow(tool, "127.0.0.1", server.port, [stream], timeout=60)
    return results[0]


def counted(result: StreamResult) -> tuple[object, ...]:
    return (result.lines, result.next_seq, result.gaps, result.duplicates, result.ended)


@needs_cc
async def test_c_and_python_clients_see_the_same_lines_of_a_real_job(
    system: System, c_clients: NativeTool
) -> None:
    """Two viewers of one job, one C and one Python, count the same lines in order and its end."""
    job = await emit_job(system, lines=400, interval="0.002")
    path = f"/api/jobs/{job}/stream"
    headers = {"Authorization": f"Bearer {system.admin_token}"}
    async with (
        SseClients(c_clients, "127.0.0.1", system.port, headers) as in_c,
        SseClients(python_sseclients("compared"), "127.0.0.1", system.port, headers) as in_python,
    ):
        await in_c.open([Stream(path, resume=True)])
        await in_python.open([Stream(path, resume=True)])
        (c,) = await in_c.wait(60)
        (py,) = await in_python.wait(60)
    assert counted(c) == counted(py) == (400, 401, 0, 0, "done")
    assert c.status == py.status == 200
    assert c.last_id == py.last_id is not None  # the same last frame id (the job's status)
    assert c.first_line_at is not None
    assert in_c.cpu_seconds() > 0


async def test_lines_split_across_chunks_and_reads_are_counted_once_each(
    clients: NativeTool,
) -> None:
    """Frames cut mid-``{"seq":``, mid blank line, mid chunk-size line and mid chunk end: every
    line is counted once, in order, each with its delay on the monotonic clock."""
    frames = b"retry: 3000\n\n" + b"".join(line_frame(n, 100 + n) for n in range(1, 7)) + DONE
    second = frames.index(b'{"seq":2') + 3  # inside the mark
    blank = frames.index(b"\n\n", frames.index(b'{"seq":3')) + 1  # between its two line breaks
    body = b"".join(chunk(part) for part in split_at(frames, [second, blank]))
    # Then the chunk coding itself cut: inside a size line, inside a chunk's closing CRLF, and
    # inside the fifth line's mark.
    first_end = body.index(b"\r\n", body.index(b"\r\n") + 2) + 1
    fifth = body.index(b'{"seq":5') + 4
    pieces = split_at(body, [1, first_end, fifth])
    async with ScriptedSse([Answer(pieces=pieces)]) as server:
        result = await follow_one(clients, server, Stream("/s"))
    assert counted(result) == (6, 7, 0, 0, "done")
    assert len(result.delays) == 6
    assert all(0 <= delay < 3600 for delay in result.delays)  # the same clock as the stamps


@needs_cc
async def test_a_gap_and_a_duplicate_are_counted_even_in_one_read(c_clients: NativeTool) -> None:
    """Line 4 missing and line 5 twice in one read: one gap, one duplicate (bench/sse.py's
    Python client checks a read's first and last line only and misses this pair)."""
    frames = b"".join(line_frame(n, n) for n in (1, 2, 3, 5, 5, 6)) + DONE
    async with ScriptedSse([Answer(pieces=[chunk(frames)])]) as server:
        result = await follow_one(c_clients, server, Stream("/s"))
    assert counted(result) == (6, 7, 1, 1, "done")


@needs_cc
async def test_a_gap_and_a_duplicate_across_reads_are_counted(c_clients: NativeTool) -> None:
    """The same stream in pieces cut inside frames: the same gap and duplicate."""
    frames = b"".join(line_frame(n, n) for n in (1, 2, 3, 5, 5, 6)) + DONE
    cuts = [frames.index(b'{"seq":5') + 2, frames.rindex(b'{"seq":5') + 7]
    pieces = [chunk(part) for part in split_at(frames, cuts)]
    async with ScriptedSse([Answer(pieces=pieces)]) as server:
        result = await follow_one(c_clients, server, Stream("/s"))
    assert counted(result) == (6, 7, 1, 1, "done")


async def test_a_stream_ended_without_done_resumes_after_its_last_event_id(
    clients: NativeTool,
) -> None:
    """The server ends the stream after line 3 (no ``done``): the client waits the stream's
    ``retry``, asks again with ``Last-Event-ID`` of line 3, and gets 4, 5 and the end."""
    first = b"retry: 50\n\n" + b"".join(line_frame(n, 10 + n) for n in (1, 2, 3))
    rest = b"".join(line_frame(n, 10 + n) for n in (4, 5)) + DONE
    answers = [Answer(pieces=[chunk(first)]), Answer(pieces=[chunk(rest)])]
    async with ScriptedSse(answers) as server:
        result = await follow_one(clients, server, Stream("/s", resume=True))
    assert counted(result) == (5, 6, 0, 0, "done")
    assert result.resumes == 1
    assert "last-event-id" not in server.requests[0]
    assert server.requests[1]["last-event-id"] == "13:0"


async def test_a_stream_not_resumed_ends_closed(clients: NativeTool) -> None:
    """Without ``resume`` a stream the server ends without ``done`` is reported ``closed``."""
    first = b"".join(line_frame(n, n) for n in (1, 2))
    async with ScriptedSse([Answer(pieces=[chunk(first)])]) as server:
        result = await follow_one(clients, server, Stream("/s"))
    assert counted(result) == (2, 3, 0, 0, "closed")
    assert len(server.requests) == 1


async def test_a_refused_stream_is_reported_with_its_status(clients: NativeTool) -> None:
    """A 403 is not retried: opening the streams fails, naming the path and the status."""
    answers = [Answer(status=403, pieces=[b"forbidden"], chunked=False)]
    async with ScriptedSse(answers) as server, SseClients(clients, "127.0.0.1", server.port) as cs:
        with pytest.raises(StreamsRefused, match="/refused answered 403") as refused:
            await cs.open([Stream("/refused")])
    assert refused.value.refused == [(0, 403)]
    assert len(server.requests) == 1


async def test_a_404_is_retried_until_the_stream_opens(clients: NativeTool) -> None:
    """The job's row not projected yet (404), twice: the third answer is the stream."""
    frames = line_frame(1, 1) + DONE
    answers = [Answer(status=404), Answer(status=404), Answer(pieces=[chunk(frames)])]
    async with ScriptedSse(answers) as server:
        result = await follow_one(clients, server, Stream("/s"))
    assert counted(result) == (1, 2, 0, 0, "done")
    assert len(server.requests) == 3


async def test_a_404_past_the_open_bound_is_refused(clients: NativeTool) -> None:
    """A stream still 404 after ``open_seconds`` (its job never projected) is refused as a 404."""
    async with (
        ScriptedSse([Answer(status=404)]) as server,
        SseClients(clients, "127.0.0.1", server.port, open_seconds=0.3) as cs,
    ):
        with pytest.raises(StreamsRefused) as refused:
            await cs.open([Stream("/never")])
    assert refused.value.refused == [(0, 404)]
    assert len(server.requests) >= 2  # retried meanwhile


async def test_resumes_stop_at_their_limit(clients: NativeTool) -> None:
    """A server that always ends the stream without ``done``: two resumes, then ``closed``."""
    frames = b"retry: 10\n\n" + line_frame(1, 1)
    async with (
        ScriptedSse([Answer(pieces=[chunk(frames)])]) as server,
        SseClients(clients, "127.0.0.1", server.port, max_resumes=2) as cs,
    ):
        await cs.open([Stream("/s", resume=True)])
        (result,) = await cs.wait(60)
    assert result.ended == "closed"
    assert result.resumes == 2
    assert len(server.requests) == 3
    assert result.duplicates == 2  # line 1 again at each resume (this server ignores the id)


async def test_stopping_the_clients_ends_open_streams_closed(clients: NativeTool) -> None:
    """A stream still open when the bench stops the clients ends ``closed`` with what it got."""
    async with (
        ScriptedSse([Answer(pieces=[chunk(line_frame(1, 1))], hold=True)]) as server,
        SseClients(clients, "127.0.0.1", server.port) as cs,
    ):
        await cs.open([Stream("/s"), Stream("/s", record_delays=False)])  # both answered 200
        results = await cs.stop()
    assert [r.ended for r in results] == ["closed", "closed"]
    assert [r.record_delays for r in results] == [True, False]


async def test_a_line_of_megabytes_is_one_line(clients: NativeTool) -> None:
    """A 3 MiB line in 64 KiB chunks between two short ones: three lines, no error."""
    long = line_frame(2, 2).replace(b" line 2", b" line 2 " + b"x" * (3 << 20))
    frames = line_frame(1, 1) + long + line_frame(3, 3) + DONE
    pieces = [chunk(frames[at : at + 65536]) for at in range(0, len(frames), 65536)]
    async with ScriptedSse([Answer(pieces=pieces)]) as server:
        result = await follow_one(clients, server, Stream("/s"))
    assert counted(result) == (3, 4, 0, 0, "done")
    assert result.error == ""


def expected_counts(seqs: list[int]) -> tuple[int, int, int, int, str]:
    """What a client counts, line by line: (lines, next_seq, gaps, duplicates, ended)."""
    next_seq, gaps, duplicates = 1, 0, 0
    for seq in seqs:
        if seq == next_seq:
            next_seq += 1
        elif seq > next_seq:
            gaps += seq - next_seq
            next_seq = seq + 1
        else:
            duplicates += 1
    return len(seqs), next_seq, gaps, duplicates, "done"


@needs_cc
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.integers(1, 30), min_size=1, max_size=25), data=st.data())
def test_any_stream_cut_anywhere_is_counted_line_by_line(
    c_clients: NativeTool, seqs: list[int], data: st.DataObject
) -> None:
    """Lines in any order, in chunks cut anywhere and read in pieces cut anywhere: the C
    clients count what checking line by line counts, each line timed."""
    frames = b"".join(line_frame(seq, i) for i, seq in enumerate(seqs, 1)) + DONE
    chunk_cuts = data.draw(st.lists(st.integers(0, len(frames)), max_size=5))
    body = b"".join(chunk(part) for part in split_at(frames, chunk_cuts))
    read_cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=5))

    async def run() -> StreamResult:
        async with ScriptedSse([Answer(pieces=split_at(body, read_cuts))]) as server:
            return await follow_one(c_clients, server, Stream("/s"))

    result = asyncio.run(run())
    assert counted(result) == expected_counts(seqs)
    assert len(result.delays) == len(seqs)


def test_python_clients_where_there_is_no_compiler(tmp_path: Path) -> None:
    """Without a working cc the bench runs the Python clients and says why."""
    tool = compile_sseclients(tmp_path, compiler="false")
    assert tool.kind == "Python"
    assert "cc failed" in tool.note
    assert not list(tmp_path.iterdir())  # nothing half-built left behind
