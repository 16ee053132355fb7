"""The public contracts: a JSON Schema of every event, tolerance of newer events, and a runnable
example consumer following a live system."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from tests.history_support import (
    job_events,
    publish,
    publisher,
    reading_system,
    wait_projected,
    without_auth,
)
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

ROOT = Path(__file__).parent.parent


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return without_auth(msgspec.structs.replace(settings, job_types_file=TEST_TYPES))


def newer_status_changed(job_id: str) -> bytes:
    """A StatusChanged as a newer version might send it: version 2, with a field we lack."""
    event = events.StatusChanged(
        job_id=job_id, event_id=events.terminal_event_id(job_id), status=events.JobStatus.FAILED
    )
    body = msgspec.to_builtins(event)
    body.update(version=2, retry_of="j-previous", type="StatusChanged")
    return msgspec.json.encode(body)


def unknown_event(job_id: str) -> bytes:
    return msgspec.json.encode(
        {"type": "JobTeleported", "version": 1, "job_id": job_id, "event_id": "e1", "by": "ops"}
    )


async def test_schema_command_describes_every_event() -> None:
    """`jobrunner schema events` prints a JSON Schema with each event type and its fields."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobrunner.cli", "schema", "events", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    schema = json.loads(out)
    defs = schema["$defs"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in schema["anyOf"]} == {
        t.__name__ for t in events.EVENT_TYPES
    }
    assert defs["StatusChanged"]["properties"]["type"] == {"enum": ["StatusChanged"]}
    assert "job_id" in defs["LineLogged"]["required"]
    assert defs["LineLogged"]["x-subject"] == "<prefix>.job.<job_id>.lines"
    assert set(defs["JobStatus"]["enum"]) == {s.value for s in events.JobStatus}


def test_schema_accepts_what_the_codec_writes() -> None:
    """Every event the codec encodes has exactly the properties its schema names."""
    from jobrunner.contracts.jsonschema import event_schema

    defs = event_schema()["$defs"]
    for event in job_events("j", status=events.JobStatus.COMPLETED, lines=["x"]):
        body = json.loads(codec.encode(event))
        assert set(body) <= set(defs[type(event).__name__]["properties"])


def test_decoding_skips_unknown_types_and_fields() -> None:
    """An older consumer decodes a newer event's known fields and skips unknown event types."""
    decoded = codec.decode(newer_status_changed("j"))
    assert isinstance(decoded, events.StatusChanged)
    assert decoded.status == events.JobStatus.FAILED
    assert codec.decode(unknown_event("j")) is None


async def test_projector_keeps_going_past_newer_events(system: System, settings: Settings) -> None:
    """A newer event type and a newer field on the stream do not stop the read models."""
    names = Names(settings.prefix)
    await publish(settings, job_events("n1", status=events.JobStatus.RUNNING))
    async with publisher(settings) as js:
        await js.publish(f"{settings.prefix}.job.n1.archived", unknown_event("n1"))
        ack = await js.publish(names.job_kind_subject("n1", "status"), newer_status_changed("n1"))
    await wait_projected(settings, ack.seq)
    async with system.client() as client:
        job = (await client.get("/api/jobs/n1")).json()
    assert job["status"] == "failed"


async def test_example_consumer_prints_failed_jobs_with_their_last_lines(
    system: System, settings: Settings
) -> None:
    """examples/failed_jobs.py, run against a live system, prints a failed job's last ten lines."""
    async with system.client() as client:
        ok = await client.post("/api/jobs", json={"job_type": "emit", "parameters": {"lines": 3}})
        bad = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 15, "exit_code": 3}}
        )
    assert ok.status_code == bad.status_code == 201
    bad_id = bad.json()["id"]
    # An event type this example has never heard of, before the failure is reported.
    async with publisher(settings) as js:
        await js.publish(f"{settings.prefix}.job.{bad_id}.archived", unknown_event(bad_id))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "failed_jobs.py"),
        "--nats-url",
        settings.nats_url,
        "--prefix",
        settings.prefix,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            header = (await proc.stdout.readline()).decode()
            tail = [(await proc.stdout.readline()).decode().split(None, 2) for _ in range(10)]
    finally:
        proc.terminate()
        await proc.wait()
    assert header.startswith(f"FAILED {bad_id} ")
    assert "EXIT_NONZERO" in header
    assert [int(seq) for seq, _, _ in tail] == list(range(6, 16))
    assert tail[-1][2].strip() == "INFO line 15 [15/15]"


async def test_example_consumer_stops_on_sigterm_while_no_server_answers() -> None:
    """examples/failed_jobs.py pointed at an address where no NATS runs (a typo, the server not
    up yet) keeps trying, and a SIGTERM still ends it (it used to be left only to SIGKILL)."""
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "failed_jobs.py"),
        "--nats-url",
        f"nats://127.0.0.1:{port}",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        # Its first refused connect is reported on stderr: it is trying by then.
        written = b""
        async with asyncio.timeout(60):
            while b"Connect call failed" not in written:
                line = await proc.stderr.readline()
                # b"": it ended (or closed stderr) before trying; its words say why.
                assert line, (
                    f"it ended before trying to connect: {written.decode(errors='replace')}"
                )
                written += line
        proc.terminate()
        async with asyncio.timeout(60):  # a bound for a loaded machine, far below "for ever"
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0


def test_schema_states_the_bounds_of_progress_and_results() -> None:
    """The schema tells a consumer the ranges and lengths it can rely on."""
    from jobrunner.contracts.jsonschema import event_schema

    defs = event_schema()["$defs"]
    progress = defs["ProgressReported"]["properties"]
    current = next(s for s in progress["current"]["anyOf"] if s.get("type") == "integer")
    percent = next(s for s in progress["percent"]["anyOf"] if s.get("type") == "number")
    phase = next(s for s in progress["phase"]["anyOf"] if s.get("type") == "string")
    assert (current["minimum"], current["maximum"]) == (0, events.MAX_COUNT)
    assert (percent["minimum"], percent["maximum"]) == (0, 100)
    assert phase["maxLength"] == events.MAX_PHASE_CHARS
    result = next(s for s in defs["StatusChanged"]["properties"]["result"]["anyOf"] if "type" in s)
    assert str(events.MAX_RESULT_BYTES) in result["description"]


async def test_stored_progress_outside_the_bounds_is_skipped_not_fatal(settings: Settings) -> None:
    """An old progress event with [99999999999999999999/5] and a NUL is skipped; the job shows."""
    names = Names(settings.prefix)
    await publish(settings, job_events("p1", status=events.JobStatus.RUNNING))
    absurd = events.ProgressReported(
        job_id="p1", current=99999999999999999999, total=5, percent=2e21, phase="a\x00b"
    )
    done = events.StatusChanged(
        job_id="p1", event_id=events.terminal_event_id("p1"), status=events.JobStatus.COMPLETED
    )
    async with publisher(settings) as js:
        await js.publish(names.subject(absurd), codec.encode(absurd))
        ack = await js.publish(names.subject(done), codec.encode(done))
    async with reading_system(settings) as system:
        await wait_projected(settings, ack.seq)
        async with system.client() as client:
            job = (await client.get("/api/jobs/p1")).json()
    assert job["status"] == "completed"
    assert job["progress"] is None
