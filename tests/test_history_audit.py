"""Auditing: a job's raw event history over HTTP and in the terminal (``jobrunner events``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from tests.cli_support import cli_env, run_cli
from tests.history_support import job_events, logged_job, publish, reading_system, wait_projected
from tests.system import System


@pytest.fixture
async def audited(settings: Settings) -> AsyncIterator[System]:
    """Job ``a`` (requested, running, 10 line batches, completed) between other jobs' events."""
    batch = job_events("x", minute=0, status=JobStatus.FAILED)
    batch += logged_job("a", lines=100, batch=10)
    batch += job_events("y", minute=2, status=JobStatus.COMPLETED)
    last = await publish(settings, batch)
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


async def test_job_events_are_the_stored_history_in_order(audited: System) -> None:
    """GET /api/jobs/{id}/events lists the job's events with sequence, subject, time and body."""
    async with audited.client() as client:
        page = (await client.get("/api/jobs/a/events")).json()
    items = page["items"]
    kinds = [item["event"]["type"] for item in items]
    assert kinds == ["JobRequested", "StatusChanged"] + ["LineLogged"] * 10 + ["StatusChanged"]
    assert [item["stream_seq"] for item in items] == list(range(4, 17))
    assert {item["subject"].rsplit(".", 1)[1] for item in items} == {
        "requested",
        "status",
        "lines",
    }
    assert all(item["event"]["job_id"] == "a" for item in items)
    assert items[2]["event"]["lines"][0][4] == "INFO line 1 [1/100]"
    assert items[0]["time"].endswith("Z")
    assert page["next_after"] is None


async def test_job_events_page_with_next_after(audited: System) -> None:
    """Small pages, followed with next_after, give the same events once each."""
    seqs: list[int] = []
    params: dict[str, object] = {"limit": 4}
    async with audited.client() as client:
        while True:
            page = (await client.get("/api/jobs/a/events", params=params)).json()
            seqs += [item["stream_seq"] for item in page["items"]]
            if page["next_after"] is None:
                break
            params["after"] = page["next_after"]
    assert seqs == list(range(4, 17))


async def test_events_of_an_unknown_job_are_404(audited: System) -> None:
    """A job id that never existed (or a wildcard) is a 404, never someone else's events."""
    async with audited.client() as client:
        missing = await client.get("/api/jobs/nope/events")
        wildcard = await client.get("/api/jobs/*/events")
    assert missing.status_code == 404
    assert wildcard.status_code == 404


@pytest.mark.parametrize(
    ("path", "largest"),
    [("/api/jobs/a/logs", 2**31 - 1), ("/api/jobs/a/events", 2**63 - 1)],
)
async def test_after_past_any_sequence_is_a_clear_refusal(
    audited: System, path: str, largest: int
) -> None:
    """`after` at the largest sequence there can be answers an empty last page; past it (a
    client's overflowed counter), `400 INVALID_QUERY` naming `after`, not a 500 or a 503."""
    async with audited.client() as client:
        at_the_end = await client.get(path, params={"after": largest})
        past = [await client.get(path, params={"after": largest + n}) for n in (1, 2**64)]
    assert at_the_end.status_code == 200, at_the_end.text
    assert at_the_end.json()["items"] == []
    assert at_the_end.json()["next_after"] is None
    for answer in past:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("INVALID_QUERY", "after")
        assert f"between 0 and {largest}" in error["message"]


async def run_events_cli(settings: Settings, *args: str) -> list[str]:
    env = cli_env(settings) | {"JOBRUNNER_STATE_DIR": settings.state_dir}
    out, _ = await run_cli(*args, env=env)
    return out.splitlines()


async def test_cli_prints_a_jobs_history_as_json_lines(audited: System, settings: Settings) -> None:
    """`jobrunner events --job a` prints one JSON object per stored event, in order."""
    lines = await run_events_cli(settings, "events", "--job", "a")
    events = [json.loads(line) for line in lines]
    assert [e["stream_seq"] for e in events] == list(range(4, 17))
    assert events[-1]["event"]["status"] == "completed"


async def test_cli_since_a_sequence_starts_there(audited: System, settings: Settings) -> None:
    """--since 15 starts at stream sequence 15, across all jobs, to the end."""
    lines = await run_events_cli(settings, "events", "--since", "15")
    assert [json.loads(line)["stream_seq"] for line in lines] == [15, 16, 17, 18, 19]


async def test_cli_since_a_time_or_an_age_starts_there(audited: System, settings: Settings) -> None:
    """--since takes an ISO time or an age: an hour ago is everything, next year nothing."""
    everything = await run_events_cli(settings, "events", "--since", "1h")
    future = await run_events_cli(settings, "events", "--since", "2999-01-01T00:00:00Z")
    assert [json.loads(line)["stream_seq"] for line in everything] == list(range(1, 20))
    assert future == []


async def test_cli_finds_nats_from_the_runtime_file(audited: System, settings: Settings) -> None:
    """With no NATS URL configured, `jobrunner events` reads runtime.json of `jobrunner up`."""
    state = Path(settings.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / "runtime.json").write_text(
        json.dumps({"nats_url": settings.nats_url, "prefix": settings.prefix})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        "events",
        "--job",
        "y",
        "--state-dir",
        str(state),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    kinds = [json.loads(line)["event"]["type"] for line in out.decode().splitlines()]
    assert kinds == ["JobRequested", "StatusChanged", "StatusChanged"]


async def test_cli_follow_prints_new_events_as_they_arrive(
    audited: System, settings: Settings
) -> None:
    """--follow keeps printing: an event published later shows up."""
    env = {**os.environ, **cli_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        "events",
        "--follow",
        "--since",
        "19",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        await publish(settings, job_events("late", minute=9))
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
    finally:
        proc.terminate()
        await proc.wait()
    assert first["stream_seq"] == 19
    assert second["event"]["job_id"] == "late"


def _read_until_closed(terminal: int) -> bytes:
    """All a pseudo-terminal's other end wrote, until it was closed (EIO on Linux)."""
    out = b""
    with contextlib.suppress(OSError):
        while data := os.read(terminal, 65536):
            out += data
    return out


async def test_cli_on_a_terminal_shows_a_lines_escape_sequences_as_text(
    settings: Settings,
) -> None:
    """`jobrunner events` on a terminal prints what a terminal would obey in an event (a stored
    line's full reset, 8-bit CSI, BEL and bidi override, as an older runner stored them; a
    foreign event's job type setting the window title) as visible symbols, never as the
    sequences themselves."""
    hostile = "reset\x1bc clear\u009b2J bell\x07 \u202eevil"
    await publish(settings, job_events("esc", "t\x1b]0;x\x07", lines=[hostile]))
    terminal, client_side = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobrunner.cli",
            "events",
            "--job",
            "esc",
            env={**os.environ, **cli_env(settings)},
            stdout=client_side,
        )
    finally:
        os.close(client_side)  # the child has its own copy: the terminal closes when it exits
    try:
        shown = await asyncio.wait_for(asyncio.to_thread(_read_until_closed, terminal), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:  # a wait timed out: no client left behind
            proc.kill()
            await proc.wait()
        os.close(terminal)
    text = shown.decode()
    assert "reset\u241bc clear\\x9b2J bell\u2407 \\u202eevil" in text
    assert "job_type=t\u241b]0;x\u2407" in text
    assert not any(c in text for c in "\x1b\x07\u009b\u202e")


def test_readable_form_shows_lines_under_their_event() -> None:
    """On a terminal each event is one readable line, its log lines indented below."""
    from datetime import UTC, datetime

    from jobrunner.common.audit import StoredEvent
    from jobrunner.common.eventlog import readable

    text = readable(
        StoredEvent(
            stream_seq=7,
            subject="p.job.a.lines",
            time=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
            event={
                "type": "LineLogged",
                "job_id": "a",
                "lines": [[1, "stdout", "INFO", "2026-01-01T12:00:00Z", "hello"]],
            },
        )
    )
    assert text.splitlines()[0] == "#7       2026-01-01 12:00:00.123  a  LineLogged"
    assert text.splitlines()[1].split() == ["1", "stdout", "INFO", "hello"]
