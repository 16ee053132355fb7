"""`jobrunner up` keeps its embedded NATS server and Postgres running: one killed outright (as
the OOM killer would) is started again on its port and data, and jobs run again. Before session
41 a dead server stayed dead: `/health` answered `unavailable` and every POST 503 until `up`
itself was restarted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.tools.up_process import URL_RE, Up, run_a_job

# From the kill to a /health that reaches both servers again (a Postgres start replays its WAL).
BACK_WITHIN_SECONDS = 90
SERVER_ARGV = {"nats-server": b"nats-server", "postgres": b"postgres"}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: run as root, Postgres runs as the 'postgres' user, who must
    # be able to reach its data directory.
    with scratch_dir("jobrunner-test-up-server-dies-") as path:
        yield path


def server_pid(up_pid: int, server: str) -> int:
    """The pid of the embedded ``server`` `jobrunner up` (``up_pid``) started."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == up_pid and program.endswith(b"/" + SERVER_ARGV[server]):
            return int(pid)
    raise AssertionError(f"`jobrunner up` ({up_pid}) runs no {server}")


def health_once_back(base_url: str, within: float) -> dict[str, object]:
    """`/health` once it reaches NATS and Postgres again; its last answer if not within."""
    deadline = time.monotonic() + within
    body: dict[str, object] = {}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                body = client.get("/health").json()
            except httpx.HTTPError as error:
                body = {"error": repr(error)}
            if body.get("nats") is True and body.get("postgres") is True:
                return body
            time.sleep(0.5)
    return body


def read_model_once_ended(base_url: str, job_id: str, within: float) -> dict[str, object]:
    """The job as `GET /api/jobs/{id}` shows it once the projector has its end (its stream's
    `done` may come first); its last answer if not within."""
    deadline = time.monotonic() + within
    with httpx.Client(base_url=base_url, timeout=30) as client:
        job = client.get(f"/api/jobs/{job_id}").json()
        while job["status"] in ("pending", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            job = client.get(f"/api/jobs/{job_id}").json()
    return dict(job)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("server", ["nats-server", "postgres"])
def test_a_killed_embedded_server_is_started_again_and_jobs_run(
    state_dir: Path, server: str
) -> None:
    """Killed outright, `up`'s NATS server or Postgres comes back by itself on the same port:
    `/health` reaches it again, `up` says what happened, and the next job completes."""
    up = Up(state_dir, free_port(), auth="false")
    try:
        base_url = up.wait_for(URL_RE, 180).group(1)
        run_a_job(base_url, None)
        killed = server_pid(up.proc.pid, server)
        os.kill(killed, signal.SIGKILL)
        health = health_once_back(base_url, BACK_WITHIN_SECONDS)
        assert (health.get("nats"), health.get("postgres")) == (True, True), (
            f"{server} killed: /health did not come back within {BACK_WITHIN_SECONDS} s: "
            f"{health}\n{up.output[-4000:]}"
        )
        assert f"{server} exited: starting it again" in up.output
        assert server_pid(up.proc.pid, server) != killed
        job_id = run_a_job(base_url, None)
        job = read_model_once_ended(base_url, job_id, BACK_WITHIN_SECONDS)
        assert job["status"] == "completed", f"{job}\n{up.output[-4000:]}"
        assert job["log_count"] > 0, job
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0, up.output[-4000:]
