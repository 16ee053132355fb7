"""Helpers for the runner tests: waiting on a job's state, and runner processes of their own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from jobrunner.common.settings import ENV_PREFIX, Settings
from jobrunner.services.runner.running import RunnerIdentity

REPO = Path(__file__).resolve().parents[2]
RUNNER_TYPES = str(Path(__file__).with_name("runner_jobtypes.toml"))


async def dead_runner_beside(me: RunnerIdentity) -> RunnerIdentity:
    """A runner on ``me``'s host, since its boot, whose process is gone (a pid no longer
    alive): what a runner starting there finds of one that crashed."""
    ended = await asyncio.create_subprocess_exec("true")
    await ended.wait()
    return RunnerIdentity(f"{me.runner_id}-dead", me.host, me.boot_id, ended.pid, 1)


async def wait_job(
    client: httpx.AsyncClient,
    job_id: str,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll the job until ``condition`` holds; fail with the last state seen."""
    job: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                response = await client.get(f"/api/jobs/{job_id}")
                if response.status_code == 200:
                    job = response.json()
                    if condition(job):
                        return job
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"job {job_id} never got there; last seen: {job}") from None


async def wait_status(
    client: httpx.AsyncClient, job_id: str, *statuses: str, timeout: float = 30.0
) -> dict[str, Any]:
    return await wait_job(client, job_id, lambda j: j["status"] in statuses, timeout)


async def wait_file(path: Path, timeout: float = 30.0) -> str:
    async with asyncio.timeout(timeout):
        while not path.exists():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.05)
    return path.read_text()


async def start_job(client: httpx.AsyncClient, job_type: str, **parameters: Any) -> str:
    response = await client.post("/api/jobs", json={"job_type": job_type, "parameters": parameters})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def lines_of(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """Every stored log line of a job, read from its (finished) SSE stream."""
    from tests.sse_client import read_stream

    stream = await read_stream(client, f"/jobs/stream/{job_id}")
    return [e.json for e in stream.events if e.event == "message"]


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def wait_dead(pid: int, timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while pid_alive(pid):  # noqa: ASYNC110 - nothing to wait on but /proc
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"process {pid} is still alive") from None


def runner_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment that gives a runner process exactly these settings."""
    values = msgspec.to_builtins(settings)
    values.update(overrides)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[ENV_PREFIX + name.upper()] = text
    env["JOBRUNNER_LOG_FORMAT"] = "json"
    env["JOBRUNNER_LOG_LEVEL"] = "info"  # RunnerProcess waits for "runner started"
    return env


class RunnerProcess:
    """``python -m jobrunner.cli runner`` as a child process, killable like a real crash."""

    def __init__(self, settings: Settings, log_file: Path, **overrides: Any) -> None:
        self.env = runner_env(settings, **overrides)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn the runner and wait until it says it started (a restart sharing the log file
        of its earlier life waits for its own line, not the earlier one's)."""
        earlier = self._started_lines()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting is quick
                [sys.executable, "-m", "jobrunner.cli", "runner"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with asyncio.timeout(timeout):
            while self._started_lines() <= earlier:
                assert self.proc.poll() is None, self.log_file.read_text()
                await asyncio.sleep(0.05)

    def _started_lines(self) -> int:
        if not self.log_file.exists():
            return 0
        return self.log_file.read_bytes().count(b"runner started")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def status_events(settings: Settings, job_id: str) -> list[str]:
    """The statuses of every StatusChanged stored for a job, in stream order."""
    from jobrunner.common import eventstore
    from jobrunner.contracts import codec, events
    from jobrunner.contracts.names import Names

    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test-reader")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(names.job_kind_subject(job_id, "status"), stream=names.stream)
        out: list[str] = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except Exception:
                break
            for msg in msgs:
                event = codec.decode(msg.data)
                assert isinstance(event, events.StatusChanged)
                out.append(event.status.value)
            if msgs[-1].metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await eventstore.close(nc)
