"""Running a tool: no shell, its own process group, and a stop that reaches every descendant."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from services.runner.output import LineSplitter

READ_CHUNK = 256 * 1024
_PR_SET_PDEATHSIG = 1


def _die_with_runner() -> None:
    # If the runner itself is killed, the kernel kills the tool too (Linux). Its descendants are
    # found by process group when the runner restarts or another runner declares it lost.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class SpawnError(Exception):
    pass


LineSink = Callable[[str, str, datetime], Awaitable[None]]


class ToolProcess:
    def __init__(self, argv: list[str], cwd: str | None, env: dict[str, str] | None) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_runner,
                limit=READ_CHUNK,
            )
        except (OSError, ValueError) as exc:
            raise SpawnError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None

    async def pump(self, sink: LineSink, max_line_bytes: int) -> None:
        """Read stdout and stderr until both close, handing each line to ``sink``."""
        assert self.proc and self.proc.stdout and self.proc.stderr
        await asyncio.gather(
            self._read(self.proc.stdout, "stdout", sink, max_line_bytes),
            self._read(self.proc.stderr, "stderr", sink, max_line_bytes),
        )

    @staticmethod
    async def _read(
        reader: asyncio.StreamReader, name: str, sink: LineSink, max_line_bytes: int
    ) -> None:
        splitter = LineSplitter(max_line_bytes)
        while chunk := await reader.read(READ_CHUNK):
            now = datetime.now(UTC)
            for line in splitter.feed(chunk):
                await sink(name, line, now)
        for line in splitter.close():
            await sink(name, line, datetime.now(UTC))

    async def wait(self) -> int:
        assert self.proc
        return await self.proc.wait()

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM to the whole group, then SIGKILL after the grace period."""
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_seconds)
        except TimeoutError:
            pass
        # Descendants that ignored SIGTERM (or outlived the leader) go too.
        self.signal_group(signal.SIGKILL)
        await self.proc.wait()
