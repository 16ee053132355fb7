"""Reconnecting with Last-Event-ID resumes exactly: no event twice, none missing."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

# A resume that hangs should fail in minutes, not at the suite-wide limit.
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def start(system: System, **parameters: object) -> str:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def line_texts(events: list) -> list[str]:
    return [e.json["text"] for e in events if e.event == "message"]


async def test_resume_mid_job_continues_after_the_last_seen_line(system: System) -> None:
    """A client that drops mid-job and reconnects with Last-Event-ID gets every later line once."""
    job_id = await start(system, lines=60, interval="0.01")
    async with system.client() as client:
        first = await read_stream(client, f"/jobs/stream/{job_id}", stop_after=25)
        last_id = [e.id for e in first.events if e.id][-1]
        rest = await read_stream(client, f"/jobs/stream/{job_id}", last_event_id=last_id)
    texts = line_texts(first.events) + line_texts(rest.events)
    assert texts == [f"INFO line {i} [{i}/60]" for i in range(1, 61)]
    assert rest.events[-1].event == "done"


async def test_resume_inside_a_batch_skips_exactly_the_lines_seen(system: System) -> None:
    """Resuming from the id of a line in the middle of a batch repeats none of that batch."""
    job_id = await start(system, lines=500)
    async with system.client() as client:
        full = await read_stream(client, f"/jobs/stream/{job_id}")
        lines = [e for e in full.events if e.event == "message"]
        batched = [e for e in lines if not e.id.endswith(":0")]
        assert batched, "a fast tool's lines should travel in batches"
        cut = lines.index(batched[len(batched) // 2])
        rest = await read_stream(client, f"/jobs/stream/{job_id}", last_event_id=lines[cut].id)
    assert line_texts(rest.events) == line_texts(lines[cut + 1 :])


async def test_resume_after_the_end_replays_from_a_finished_job(system: System) -> None:
    """Long after a job finished, resuming from any id gives the rest of its events, then done."""
    job_id = await start(system, lines=30)
    async with system.client() as client:
        full = await read_stream(client, f"/jobs/stream/{job_id}")
        ids = [e.id for e in full.events if e.id]
        middle = ids[len(ids) // 2]
        rest = await read_stream(client, f"/jobs/stream/{job_id}", last_event_id=middle)
        after_done = await read_stream(client, f"/jobs/stream/{job_id}", last_event_id=ids[-1])
    position = [e.id for e in full.events].index(middle)
    assert [(e.event, e.data) for e in rest.events] == [
        (e.event, e.data) for e in full.events[position + 1 :]
    ]
    assert [e.event for e in after_done.events] == ["done"]
    assert after_done.events[0].json["status"] == "completed"


# Values Python's int() reads as a number (or refuses with its own digit limit) that are no id
# the server sends: before session 41 "+5", "٣" and "1_0" resumed after sequence 5, 3 and 10,
# 32 digits answered 400 LAST_EVENT_ID_AHEAD and 5,000 were ignored by accident.
NOT_OUR_IDS = ["banana", "+5", "٣", "1_0", "5:+1", "9" * 32, "9" * 5000, "5 :1"]


@pytest.mark.parametrize(
    "raw",
    NOT_OUR_IDS,
    ids=["word", "plus", "arabic", "underscore", "plus_index", "32_digits", "5000_digits", "space"],
)
async def test_a_malformed_last_event_id_starts_from_the_beginning(
    system: System, raw: str
) -> None:
    """A Last-Event-ID that is not an id the server sends is ignored: every line from the start."""
    job_id = await start(system, lines=8)
    async with system.client() as client:
        stream = await read_stream(client, f"/jobs/stream/{job_id}", last_event_id=raw.encode())
    assert line_texts(stream.events) == [f"INFO line {i} [{i}/8]" for i in range(1, 9)]
