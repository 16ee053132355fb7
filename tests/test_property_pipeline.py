"""Property tests (Hypothesis): whatever a tool prints, and whatever values events carry, the
projector never stops, every printed line is stored in order, and every job ends visibly."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.runner import protocol
from jobrunner.services.runner.output import clean_text, without_colours
from tests.history_support import publisher, reading_system, wait_projected
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, lines_of, start_job, wait_status

TERMINAL = ("completed", "failed", "cancelled")
# Hypothesis runs every example on the one system the test's fixtures started.
SHARED_SYSTEM = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


def _one_line(data: bytes) -> bytes:
    return data.replace(b"\n", b"").replace(b"\r", b"")


any_number = st.integers() | st.floats(allow_nan=False) | st.none()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
output_lines = st.one_of(
    st.binary(max_size=200).map(_one_line),  # any bytes: invalid UTF-8, NUL, escapes
    st.text(max_size=100).map(lambda t: _one_line(t.encode())),
    st.builds(  # "[i/N]" as the default progress pattern reads it, any size
        lambda i, n, t: _one_line(f"INFO {t} [{i}/{n}]".encode()),
        st.integers(min_value=0, max_value=10**30),
        st.integers(min_value=0, max_value=10**30),
        st.text(max_size=20),
    ),
    st.builds(  # the progress protocol with any numbers and strings
        lambda body: _one_line(b"##jobrunner:progress " + json.dumps(body).encode()),
        st.fixed_dictionaries(
            {},
            optional={
                "current": any_number,
                "total": any_number,
                "percent": any_number,
                "phase": st.text(max_size=30) | st.none(),
                "message": st.text(max_size=30) | st.none(),
            },
        ),
    ),
    st.builds(  # the result protocol with any JSON object
        lambda body: _one_line(b"##jobrunner:result " + json.dumps(body).encode()),
        st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    ),
)


def stored_as(raw: bytes) -> str | None:
    """The text a printed line is stored as; None for a protocol message the runner takes."""
    text = clean_text(raw)
    plain = without_colours(text)
    if plain.startswith(protocol.PREFIX) and protocol.parse(plain) is not None:
        return None
    return text


async def projector_not_stuck(system: System, within: float = 30.0) -> None:
    """The projector is not stuck, says ``/health``. A look that could not tell (no
    ``projector`` in the body: its 1 s Postgres limit ran out on a loaded machine, or NATS did
    not say the stream's end) is taken again, for up to ``within`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    async with system.client(token=None) as client:
        while "projector" not in (body := (await client.get("/health")).json()):
            assert loop.time() < give_up, f"/health never said how the projector is: {body}"
            await asyncio.sleep(0.2)
    assert body["projector"]["state"] != "stuck", body


@examples(max_examples=25, deadline=None, suppress_health_check=SHARED_SYSTEM)
@given(printed=st.lists(output_lines, max_size=12))
async def test_any_tool_output_is_stored_line_by_line_and_the_job_ends(
    system: System, tmp_path: Path, printed: list[bytes]
) -> None:
    """Whatever a tool prints, each line is stored in order and the job ends, visible in the API."""
    output = tmp_path / f"{uuid.uuid4().hex}.out"
    output.write_bytes(b"".join(line + b"\n" for line in printed))
    expected = [text for text in map(stored_as, printed) if text is not None]
    async with system.client() as client:
        job_id = await start_job(client, "cat_file", file=str(output))
        job = await wait_status(client, job_id, *TERMINAL, timeout=60)
        stored = [line["text"] for line in await lines_of(client, job_id)]
    assert job["status"] == "completed", job
    assert stored == expected
    assert job["log_count"] == len(expected)
    await projector_not_stuck(system)


texts = st.text(max_size=40)  # NUL and every other character included
big_ints = st.integers(min_value=-(10**30), max_value=10**30)
times = st.datetimes(timezones=st.just(UTC))


def job_life(job_id: str) -> st.SearchStrategy[list[events.Event]]:
    """A job's events with any field values the contracts let through."""
    lines = st.lists(
        st.builds(events.LogLine, big_ints, texts, texts, times, texts), min_size=1, max_size=3
    )
    return st.tuples(
        st.builds(
            events.JobRequested,
            job_id=st.just(job_id),
            job_type=texts,
            parameters=st.dictionaries(texts, json_values, max_size=3),
            lock=texts | st.none(),
            requested_by=texts | st.none(),
            occurred_at=times,
        ),
        st.lists(
            st.one_of(
                st.builds(
                    events.ProgressReported,
                    job_id=st.just(job_id),
                    current=big_ints | st.none(),
                    total=big_ints | st.none(),
                    percent=st.floats(allow_nan=False, allow_infinity=False) | st.none(),
                    phase=texts | st.none(),
                    message=texts | st.none(),
                ),
                st.builds(events.LineLogged, job_id=st.just(job_id), lines=lines),
                st.builds(
                    events.CancelRequested, job_id=st.just(job_id), requested_by=texts | st.none()
                ),
                st.builds(
                    events.WebhookAttempted,
                    job_id=st.just(job_id),
                    delivery_id=texts,
                    webhook_index=st.integers(0, events.MAX_COUNT),
                    url=texts,
                    attempt=st.integers(1, events.MAX_COUNT),
                    outcome=st.sampled_from(list(events.WebhookOutcome)),
                    status_code=big_ints | st.none(),
                    error=st.builds(ErrorInfo, code=texts, message=texts) | st.none(),
                    duration_ms=st.floats() | st.none(),
                    occurred_at=times,
                ),
                st.builds(
                    events.StatusChanged,
                    job_id=st.just(job_id),
                    status=st.sampled_from(list(JobStatus)),
                    exit_code=big_ints | st.none(),
                    error=st.builds(ErrorInfo, code=texts, message=texts) | st.none(),
                    runner_id=texts | st.none(),
                    result=st.dictionaries(texts, json_values, max_size=3) | st.none(),
                    occurred_at=times,
                ),
            ),
            max_size=6,
        ),
    ).map(lambda life: [life[0], *life[1]])


@pytest.fixture
async def projecting(settings: Settings) -> Any:
    async with reading_system(settings) as system:
        yield system


@examples(max_examples=60, deadline=None, suppress_health_check=SHARED_SYSTEM)
@given(data=st.data())
async def test_any_event_values_leave_the_projector_at_the_end_of_the_stream(
    projecting: System, settings: Settings, data: st.DataObject
) -> None:
    """Events with any field values never stop the projector: it reaches the stream's end."""
    job_id = f"p{uuid.uuid4().hex[:12]}"
    life = data.draw(job_life(job_id))
    async with publisher(settings) as js:
        last = await eventstore.publish_many(js, Names(settings.prefix), life)
    await wait_projected(settings, last)
    await projector_not_stuck(projecting)
    assert not projecting._tasks["projector"].done()
