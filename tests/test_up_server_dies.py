"""`jobrunner up` keeps its embedded NATS server and Postgres running: one killed outright (as
the OOM killer would) is started again on its port and data, and the job printing meanwhile
loses no line. Before session 41 a dead server stayed dead: `/health` answered `unavailable` and
every POST 503 until `up` itself was restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from jobrunner.embedded.serverprocess import free_port
from tests.tools.up_process import URL_RE, Up, processes_using, run_a_job, server_pid

# From the kill to a /health that reaches both servers again (a Postgres start replays its WAL).
BACK_WITHIN_SECONDS = 90
TEST_TYPES = str(Path(__file__).parent / "tools" / "jobtypes.toml")
# The job printing across the kill: long enough to be killed mid-way (~15 s of lines).
LINES = 3000
# A setting Postgres refuses to start with: a start again fails while it is in its config.
BROKEN_SETTING = "\nmax_connections = 'not-a-number'\n"


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


def logged_lines(base_url: str, job_id: str) -> list[str]:
    """Every line of the job's log, page by page, in order."""
    texts: list[str] = []
    after = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while True:
            page = client.get(
                f"/api/jobs/{job_id}/logs", params={"after": after, "limit": 1000}
            ).json()
            texts += [item["text"] for item in page["items"]]
            if page["next_after"] is None:
                return texts
            after = page["next_after"]


def once_printing(base_url: str, job_id: str, lines: int) -> None:
    """Once the read models hold ``lines`` of the job's lines (the tool is mid-way)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while client.get(f"/api/jobs/{job_id}").json()["log_count"] < lines:
            assert time.monotonic() < deadline, "the job printed nothing within 60 s"
            time.sleep(0.1)


def running_again(up: Up, server: str) -> None:
    up.wait_for(re.compile(f"{server} is running again"), BACK_WITHIN_SECONDS)


def failed_starts(up: Up, server: str) -> list[dict[str, object]]:
    """The `<server> did not start again` lines `up` logged (JSON), in order."""
    lines = [json.loads(line) for line in up.output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == f"{server} did not start again"]


def until_failed_starts(up: Up, server: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(failed_starts(up, server)) < count:
        assert time.monotonic() < deadline, f"not {count} failed starts:\n{up.output[-4000:]}"
        time.sleep(0.2)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("server", ["nats-server", "postgres"])
def test_a_server_killed_mid_job_is_started_again_and_no_line_is_lost(
    state_dir: Path, server: str
) -> None:
    """Killed outright while a tool prints numbered lines, `up`'s NATS server or Postgres comes
    back by itself on its port, `/health` reaches it again, and the job completes with each
    line in its log exactly once (README: no line is lost)."""
    up = Up(state_dir, free_port(), auth="false", job_types_file=TEST_TYPES)
    try:
        base_url = up.wait_for(URL_RE, 180).group(1)
        with httpx.Client(base_url=base_url, timeout=30) as client:
            created = client.post(
                "/api/jobs",
                json={"job_type": "emit", "parameters": {"lines": LINES, "interval": "0.005"}},
            )
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
        once_printing(base_url, job_id, 200)
        killed = server_pid(up.proc.pid, server)
        os.kill(killed, signal.SIGKILL)
        # The keeper's word first: /health may still answer from before the kill.
        running_again(up, server)
        health = health_once_back(base_url, BACK_WITHIN_SECONDS)
        assert (health.get("nats"), health.get("postgres")) == (True, True), (
            f"{server} killed: /health did not come back within {BACK_WITHIN_SECONDS} s: "
            f"{health}\n{up.output[-4000:]}"
        )
        assert f"{server} exited: starting it again" in up.output
        assert server_pid(up.proc.pid, server) != killed
        job = read_model_once_ended(base_url, job_id, 300)
        assert job["status"] == "completed", f"{job}\n{up.output[-4000:]}"
        printed = [f"INFO line {i} [{i}/{LINES}]" for i in range(1, LINES + 1)]
        assert logged_lines(base_url, job_id) == printed
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0, up.output[-4000:]


@pytest.mark.timeout(600)
def test_a_server_that_cannot_start_keeps_no_other_down(state_dir: Path) -> None:
    """Postgres cannot start again (a broken setting) and nats-server is killed too: NATS runs
    again while Postgres' starts go on failing, waits doubling (0.5 s up to 10 s), its last words
    said once; the setting mended, Postgres runs again and jobs complete. Before, the keeper
    waited on Postgres' start for good and NATS stayed dead."""
    up = Up(state_dir, free_port(), auth="false")
    conf = state_dir / "postgres" / "data" / "postgresql.auto.conf"
    try:
        base_url = up.wait_for(URL_RE, 180).group(1)
        mended = conf.read_text()
        conf.write_text(mended + BROKEN_SETTING)
        os.kill(server_pid(up.proc.pid, "postgres"), signal.SIGKILL)
        until_failed_starts(up, "postgres", 1, BACK_WITHIN_SECONDS)
        os.kill(server_pid(up.proc.pid, "nats-server"), signal.SIGKILL)
        running_again(up, "nats-server")
        assert server_pid(up.proc.pid, "nats-server")
        until_failed_starts(up, "postgres", 6, 120)
        failures = failed_starts(up, "postgres")
        assert [line["retry_in"] for line in failures[:6]] == [0.5, 1, 2, 4, 8, 10], failures
        assert "postgres is running again" not in up.output
        # The same failure each time: Postgres' own words (its setting refused) once, then a
        # short reason.
        assert "not-a-number" in str(failures[0]["error"]), failures[0]
        assert all("error" not in line and "reason" in line for line in failures[1:]), failures

        conf.write_text(mended)
        running_again(up, "postgres")
        health = health_once_back(base_url, BACK_WITHIN_SECONDS)
        assert (health.get("nats"), health.get("postgres")) == (True, True), health
        run_a_job(base_url, None)
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0, up.output[-4000:]


@pytest.mark.timeout(300)
def test_a_stop_while_a_server_fails_to_start_again_leaves_nothing_running(
    state_dir: Path,
) -> None:
    """SIGTERM to `up` while Postgres is being started again and again: `up` ends its start
    in flight, stops everything and exits 0. Before, a start cancelled mid-way went on in its
    thread and left a server running after `up` had ended."""
    up = Up(state_dir, free_port(), auth="false")
    try:
        up.wait_for(URL_RE, 180)
        conf = state_dir / "postgres" / "data" / "postgresql.auto.conf"
        conf.write_text(conf.read_text() + BROKEN_SETTING)
        os.kill(server_pid(up.proc.pid, "postgres"), signal.SIGKILL)
        until_failed_starts(up, "postgres", 2, 60)
    finally:
        code = up.stop(signal.SIGTERM, timeout=120)
    assert code == 0, up.output[-4000:]
    assert processes_using(state_dir) == [], up.output[-4000:]
