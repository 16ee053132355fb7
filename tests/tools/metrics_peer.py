"""A service's metrics listener in a process of its own, as a runner has one, that a test can
stall (SIGSTOP: the kernel still takes connections, nothing answers) or kill.

As a program: ``python -m tests.tools.metrics_peer PORT`` serves until killed, and says
``listening`` once it does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator

from tests.tools.runners import REPO

READY = b"listening\n"


class MetricsPeer:
    """``python -m tests.tools.metrics_peer PORT``: started, stalled, resumed, killed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.tools.metrics_peer",
            str(self.port),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):  # its log lines first (structlog writes to stdout)
            while (line := await self.proc.stdout.readline()) != READY:
                assert line, "the metrics peer ended before it listened"

    def stall(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def kill(self) -> None:
        assert self.proc is not None
        self.resume()  # a stopped process dies only once it runs again
        self.proc.kill()
        await self.proc.wait()

    def _signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)


@contextlib.asynccontextmanager
async def metrics_peer(port: int) -> AsyncIterator[MetricsPeer]:
    peer = MetricsPeer(port)
    await peer.start()
    try:
        yield peer
    finally:
        if peer.proc is not None and peer.proc.returncode is None:
            await peer.kill()


def main() -> None:
    from jobrunner.common.metricsexposition import MetricsListener

    MetricsListener("runner", f"127.0.0.1:{sys.argv[1]}").start()
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main()
