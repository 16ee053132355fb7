"""Audit (session 19): tools that misuse their output, read by the runner's own pipes
(process._Pipe, _Child's pidfd exit, the pump): what they printed arrives whole, once, in order,
and the exit is the tool's own."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobrunner.common.settings import Settings
from jobrunner.services.runner.execution import ToolExecution
from jobrunner.services.runner.output import SPLIT_MARKER, LineSplitter, clean_text
from jobrunner.services.runner.process import ToolProcess
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.timeout(120)


async def no_wait() -> None:
    return None


async def run(argv: list[str], max_line_bytes: int = 65536) -> tuple[int, dict[str, list[str]]]:
    """The tool run to its end as the runner runs one: exit code, lines by stream."""
    tool = ToolProcess(argv, None, None)
    await tool.start()
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def sink(stream: str, lines: list[str], transient: str | None, at: datetime) -> None:
        out[stream].extend(lines)

    async with asyncio.timeout(60):
        pump = asyncio.ensure_future(tool.pump(sink, no_wait, max_line_bytes))
        code = await tool.wait()
        tool.end_group()
        await pump
    return code, out


async def test_a_last_line_without_a_newline_is_kept_with_the_exit_code() -> None:
    assert await run(["sh", "-c", "echo one; printf 'two'; exit 3"]) == (
        3,
        {"stdout": ["one", "two"], "stderr": []},
    )


async def test_a_tool_that_makes_its_own_stdout_non_blocking_loses_nothing() -> None:
    """It retries on EAGAIN itself (the pipe's flags are its end's, not the runner's)."""
    script = (
        "import fcntl, os\n"
        "fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_NONBLOCK)\n"
        "for i in range(50000):\n"
        "    data = b'line %d\\n' % i\n"
        "    while data:\n"
        "        try:\n"
        "            data = data[os.write(1, data):]\n"
        "        except BlockingIOError:\n"
        "            pass\n"
    )
    code, out = await run([sys.executable, "-c", script])
    assert code == 0
    assert out["stdout"] == [f"line {i}" for i in range(50000)]


async def test_a_tool_killed_by_someone_else_ends_with_its_signal_and_keeps_its_lines() -> None:
    tool = ToolProcess(["sh", "-c", "echo ready; exec sleep 30"], None, None)
    await tool.start()
    lines: list[str] = []
    first = asyncio.Event()

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        lines.extend(chunk)
        first.set()

    pump = asyncio.ensure_future(tool.pump(sink, no_wait, 1024))
    async with asyncio.timeout(30):
        await first.wait()
        assert tool.pid is not None
        os.kill(tool.pid, signal.SIGKILL)
        assert await tool.wait() == -signal.SIGKILL
        tool.end_group()
        await pump
    assert lines == ["ready"]


async def test_a_hundred_megabyte_line_arrives_in_pieces_of_the_cap() -> None:
    cap = 1024 * 1024
    code, out = await run(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 100_000_000)"], cap
    )
    assert code == 0
    pieces = out["stdout"]
    assert "".join(p.removesuffix(SPLIT_MARKER) for p in pieces) == "x" * 100_000_000
    assert all(len(p.encode()) <= cap + len(SPLIT_MARKER.encode()) for p in pieces)


# What a tool's output is made of where splitting and cleaning are tricky: line ends, a
# progress bar's carriage returns, escape codes, multibyte characters whole and in halves, NUL,
# bytes that are no UTF-8 at all, and runs long enough to reach a small cap.
OUTPUT_PIECES = [
    b"a",
    b"bc",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x1b[31m",
    b"\x1b[2K",
    b"\xc3",
    b"\xa9",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80",
    b"\x00",
    b"\xff",
    b"x" * 50,
]


def reads_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` as reads of the pipe would cut it: pieces of the given lengths, then the rest."""
    reads, start = [], 0
    for cut in cuts:
        reads.append(data[start : start + cut])
        start += cut
    return [*reads, data[start:]]


def split(reads: list[bytes], max_bytes: int) -> list[str]:
    splitter = LineSplitter(max_bytes)
    lines = [line for chunk in reads for line in splitter.feed(chunk)]
    return lines + splitter.close()


@hsettings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(OUTPUT_PIECES), max_size=60),
    st.lists(st.integers(min_value=1, max_value=40), max_size=10),
)
def test_output_cut_anywhere_gives_the_lines_of_one_read(
    pieces: list[bytes], cuts: list[int]
) -> None:
    """Binary, invalid UTF-8, progress bars and escape codes, cut by the reads anywhere (inside
    a character, a CRLF, an escape code): the same lines as the whole read at once."""
    data = b"".join(pieces)
    assert split(reads_of(data, cuts), 4096) == split([data], 4096)


@hsettings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([p for p in OUTPUT_PIECES if b"\r" not in p and b"\x1b" not in p]),
        max_size=80,
    ),
    st.lists(st.integers(min_value=1, max_value=90), max_size=10),
)
def test_lines_over_the_cap_come_in_pieces_that_join_to_the_line(
    pieces: list[bytes], cuts: list[int]
) -> None:
    """A small cap (64 B): every piece within it (marker aside), and a line's pieces joined are
    the line as cleaned whole; nothing lost or doubled at a cut, however the reads fall."""
    data = b"".join(pieces)
    out = split(reads_of(data, cuts), 64)
    assert all(len(piece.removesuffix(SPLIT_MARKER).encode()) <= 64 for piece in out)
    joined, line = [], ""
    for piece in out:
        if piece.endswith(SPLIT_MARKER):
            line += piece.removesuffix(SPLIT_MARKER)
        else:
            joined.append(line + piece)
            line = ""
    expected = [clean_text(raw) for raw in data.split(b"\n")]
    if data.endswith(b"\n") or not data:
        expected.pop()
    assert joined == expected


class TestCancelDuringAFlood:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, lease_ttl_seconds=15.0)

    async def test_a_cancel_mid_flood_stores_a_gap_free_prefix_and_ends_cancelled(
        self, system: System
    ) -> None:
        async with system.client() as client:
            response = await client.post(
                "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 2_000_000}}
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            path = f"/jobs/stream/{job_id}"
            await read_stream(client, path, stop_after=2000)
            cancel = await client.delete(f"/api/jobs/{job_id}")
            assert cancel.status_code == 202, cancel.text
            stream = await read_stream(client, path)
        texts = [e.json["text"] for e in stream.events if e.event == "message"]
        assert 2000 <= len(texts) < 2_000_000
        assert texts == [f"INFO line {i} [{i}/2000000]" for i in range(1, len(texts) + 1)]
        assert stream.events[-1].event == "done"
        assert stream.events[-1].json["status"] == "cancelled"

    async def test_the_runner_stopped_mid_flood_ends_the_job_with_a_gap_free_prefix(
        self, system: System
    ) -> None:
        """The runner's stop (what its SIGTERM sets) during a flood: the job is stopped, ends
        once (failed RUNNER_STOPPED: no one cancelled it), and what it printed before is stored
        whole and in order."""
        async with system.client() as client:
            response = await client.post(
                "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 2_000_000}}
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            path = f"/jobs/stream/{job_id}"
            await read_stream(client, path, stop_after=2000)
            await system.stop_service("runner")
            stream = await read_stream(client, path)
        texts = [e.json["text"] for e in stream.events if e.event == "message"]
        assert 2000 <= len(texts) < 2_000_000
        assert texts == [f"INFO line {i} [{i}/2000000]" for i in range(1, len(texts) + 1)]
        ends = [e for e in stream.events if e.event == "done"]
        assert len(ends) == 1
        assert stream.events[-1] is ends[0]
        assert ends[0].json["status"] == "failed"
        assert ends[0].json["error"]["code"] == "RUNNER_STOPPED"


async def test_a_child_holding_the_pipes_after_the_tool_exits_ends_with_it() -> None:
    """The tool forks a child that inherits its pipes, waits for the child's lines, and exits
    while the child still holds them: the child's lines up to then are kept, the child is
    ended with the tool (no tool process outlives its job), and the pump ends."""
    script = (
        "import os, sys, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    for i in range(3000):\n"
        "        sys.stdout.write(f'child {i}\\n')\n"
        "    sys.stdout.flush()\n"
        "    os.write(w, b'x')\n"
        "    time.sleep(60)\n"
        "    print('child late', flush=True)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n"
        "print('tool done', flush=True)\n"
    )
    tool = ToolProcess([sys.executable, "-c", script], None, None)
    execution = ToolExecution(tool, 65536)
    await execution.start()
    lines: list[str] = []

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        lines.extend(chunk)

    async with asyncio.timeout(30):
        pump = asyncio.ensure_future(tool.pump(sink, no_wait, 65536))
        assert await execution.wait() == 0  # (and the rest of its group ended)
        await pump
    assert sorted(lines) == sorted([f"child {i}" for i in range(3000)] + ["tool done"])
    assert await group_gone(tool)


async def group_gone(tool: ToolProcess, within: float = 10.0) -> bool:
    """True once nothing of the tool's group is alive (checked again until ``within`` passed).

    The pump ends when the SIGKILLed child's pipes close, and the kernel closes a dying
    process's files before it becomes a zombie: on a loaded machine /proc still shows it
    running for tens of milliseconds after (CI's rerun of the test above: 'R', ppid 1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while tool.group_alive():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
