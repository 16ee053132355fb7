"""The bench's SSE viewers in a process of their own: the C clients (bench/tools/sseclients.c)
where this machine compiles them, else the Python ones (bench/tools/sseclients.py, the same
input and output over bench/sse.py's SseClient).

The scenarios hand it the streams to open and wait for ``ready`` (every stream has its 200
answer, so the tools may start printing); at the end each stream's summary comes back with the
delays of the streams that timed their lines, and the process's CPU time: on a real deployment
the viewers are browsers on other machines, and their cost is reported apart (``sse_clients``)
instead of being mixed with the bench's own.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from bench.nativetools import NativeTool

ROOT = Path(__file__).resolve().parent.parent

CONNECTING_AT_ONCE = 50  # streams being opened at once (the listen backlog is finite)


@dataclass(frozen=True)
class Stream:
    """One stream to follow: its path, and how."""

    path: str
    resume: bool = False  # a stream ended without ``done`` is resumed, as a browser does
    record_delays: bool = True


@dataclass
class StreamResult:
    """What one stream got (bench/sse.py's SseClient's counters, under the same names)."""

    index: int
    status: int
    ended: str  # "done", "closed", "error" or "status"
    lines: int
    next_seq: int
    gaps: int
    duplicates: int
    resumes: int
    record_delays: bool
    first_line_at: float | None
    last_id: str | None
    error: str = ""
    delays: list[float] = field(default_factory=list)


class StreamsRefused(RuntimeError):
    """Streams that could not be opened: (index, status) each; status 0: no answer."""

    def __init__(self, refused: list[tuple[int, int]], paths: Sequence[str]) -> None:
        index, status = refused[0]
        super().__init__(
            f"SSE {paths[index]} answered {status}"
            + (f" (and {len(refused) - 1} more streams refused)" if len(refused) > 1 else "")
        )
        self.refused = refused


def list_line(host: str, port: int, stream: Stream, headers: dict[str, str]) -> str:
    """The tools' input line for one stream (tab-separated; see bench/tools/sseclients.c)."""
    options = ",".join(
        (
            "resume" if stream.resume else "no-resume",
            "delays" if stream.record_delays else "no-delays",
        )
    )
    fields = [host, str(port), stream.path, options, *(f"{k}: {v}" for k, v in headers.items())]
    for text in fields:
        if any(ch in text for ch in "\t\r\n\0"):
            raise ValueError(f"a tab, line break or NUL in an SSE client's field: {text!r}")
    return "\t".join(fields)


def results_from(summary: dict[str, Any], delays: array.array[float]) -> list[StreamResult]:
    out, at = [], 0
    for client in summary["clients"]:
        count = client.pop("delays")
        out.append(StreamResult(**client, delays=delays[at : at + count].tolist()))
        at += count
    return out


class SseClients:
    """The clients' process, opened with ``open`` and ended by ``wait`` (or ``stop``)."""

    def __init__(
        self,
        tool: NativeTool,
        host: str,
        port: int,
        headers: dict[str, str] | None = None,
        *,
        max_resumes: int = 20,
        open_seconds: float = 30,
    ) -> None:
        self.tool = tool
        self.host = host
        self.port = port
        self.headers = headers or {}
        self.max_resumes = max_resumes
        self.open_seconds = open_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.summary: dict[str, Any] = {}
        self._paths: list[str] = []
        self._delays_path: Path | None = None  # made by ``open``

    async def __aenter__(self) -> SseClients:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self, streams: Iterable[Stream]) -> None:
        """Starts the process on ``streams`` and returns once every one has its 200 answer;
        raises StreamsRefused (the process stopped) when any could not be opened."""
        streams = list(streams)
        self._paths = [s.path for s in streams]
        self._delays_path = Path(tempfile.mkdtemp(prefix="jobrunner-sseclients-")) / "delays.f64"
        text = "".join(f"{list_line(self.host, self.port, s, self.headers)}\n" for s in streams)
        self.proc = await asyncio.create_subprocess_exec(
            *self.tool.argv,
            "--delays",
            str(self._delays_path),
            "--connecting",
            str(CONNECTING_AT_ONCE),
            "--max-resumes",
            str(self.max_resumes),
            "--open-seconds",
            str(self.open_seconds),
            cwd=ROOT,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**30,  # the final summary is one line
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        # An empty line ends the list; stdin stays open: its end stops the streams (``stop``).
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        refused: list[tuple[int, int]] = []
        while True:
            line = (await self.proc.stdout.readline()).decode()
            if line == "ready\n":
                break
            if line.startswith("failed "):
                _, index, status = line.split()
                refused.append((int(index), int(status)))
                continue
            raise RuntimeError(f"the SSE clients ({self.tool.kind}) stopped: {line!r}")
        if refused:
            await self.close()
            raise StreamsRefused(refused, self._paths)

    def cpu_seconds(self) -> float:
        """The process's CPU seconds (user + system) so far: its own count once it has ended."""
        if self.summary:
            return float(self.summary["cpu_user_s"] + self.summary["cpu_system_s"])
        if self.proc is None:
            return 0.0
        try:
            times = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    async def wait(self, timeout: float) -> list[StreamResult]:
        """Every stream's result once every stream has ended (``done``, or given up)."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        await self.proc.wait()
        if not line or self.proc.returncode != 0:
            raise RuntimeError(
                f"the SSE clients ({self.tool.kind}) failed (exit {self.proc.returncode}); "
                "their reason is on stderr above"
            )
        self.summary = json.loads(line)
        delays: array.array[float] = array.array("d")
        assert self._delays_path is not None
        with contextlib.suppress(FileNotFoundError):
            delays.frombytes(self._delays_path.read_bytes())
        return results_from(self.summary, delays)

    async def stop(self, timeout: float = 30) -> list[StreamResult]:
        """Ends every stream still open ("closed") and returns the results."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await self.wait(timeout)

    async def close(self) -> None:
        """Kills the process if it still runs; removes its delays file."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._delays_path is not None:
            self._delays_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._delays_path.parent.rmdir()


async def follow(
    tool: NativeTool,
    host: str,
    port: int,
    streams: Iterable[Stream],
    headers: dict[str, str] | None = None,
    timeout: float = 600,
) -> tuple[list[StreamResult], float]:
    """Opens ``streams``, waits for them all to end; their results and the clients' CPU."""
    async with SseClients(tool, host, port, headers) as clients:
        await clients.open(streams)
        results = await clients.wait(timeout)
        return results, clients.cpu_seconds()
