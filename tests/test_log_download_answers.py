"""What a job's log download can answer, each told apart from a whole log: a refusal for too
many streams is a 429 JSON error (no attachment), and a download tells in its headers what the
read models held as it began (`X-Job-Status`, `X-Log-Lines`), also right after the stream's
`done` while never-reading clients hold their streams. (Session 41: an operator's download under
such a flood came back as one line, its status not checked.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.timeout(120)

STREAMS = 4  # max_streams_per_token
LINES = 100


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=TEST_TYPES, max_streams_per_token=STREAMS
    )


async def run_job(system: System, lines: int = LINES) -> str:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": lines}}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@contextlib.asynccontextmanager
async def never_reading(system: System, count: int) -> AsyncIterator[None]:
    """``count`` SSE clients that open the every-job updates stream and never read it. That
    stream stays open (a finished job's own stream replays to `done` and closes, giving its
    slot back before the download is asked for)."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            client = await stack.enter_async_context(system.client())
            response = await stack.enter_async_context(client.stream("GET", "/api/jobs/stream"))
            assert response.status_code == 200
        yield


def lines_of(body: bytes) -> list[bytes]:
    return body.splitlines()


async def test_a_download_refused_for_too_many_streams_is_a_429_error_not_a_log(
    system: System,
) -> None:
    """With the token's streams all held, the download answers 429 TOO_MANY_STREAMS as JSON,
    without an attachment; once they close, the whole log with its line count."""
    job_id = await run_job(system)
    async with system.client() as client:
        await read_stream(client, f"/jobs/stream/{job_id}")  # until done
        async with never_reading(system, STREAMS):
            refused = await client.get(f"/api/jobs/{job_id}/logs/download")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "TOO_MANY_STREAMS"
        assert refused.headers["content-type"].startswith("application/json")
        assert "content-disposition" not in refused.headers
        async with asyncio.timeout(30):
            while True:  # the held streams' slots are given back as their connections close
                whole = await client.get(f"/api/jobs/{job_id}/logs/download")
                if whole.status_code == 200:
                    break
                await asyncio.sleep(0.1)
    # Chunked: a connection that ends before the last chunk cannot pass for a whole log.
    assert whole.headers["transfer-encoding"] == "chunked"
    assert whole.headers["x-job-status"] == "completed"
    assert whole.headers["x-log-lines"] == str(LINES)
    assert len(lines_of(whole.content)) == LINES


async def test_a_download_right_after_done_says_how_many_lines_it_holds(system: System) -> None:
    """Downloads made the moment a job's stream says `done`, with never-reading viewers holding
    streams: one whose `X-Job-Status` is the job's end holds every line, as `X-Log-Lines` says;
    one read earlier says `running` and holds at least the lines its `X-Log-Lines` says."""
    for _ in range(3):
        job_id = await run_job(system)
        async with system.client() as client, never_reading(system, STREAMS - 2):
            stream = await read_stream(client, f"/jobs/stream/{job_id}")
            assert stream.events[-1].event == "done"
            response = await client.get(f"/api/jobs/{job_id}/logs/download")
        assert response.status_code == 200, response.text
        held = int(response.headers["x-log-lines"])
        if response.headers["x-job-status"] == "completed":
            assert held == LINES
            assert len(lines_of(response.content)) == LINES
        else:  # read before the projector applied the end: lines may arrive as it reads
            assert response.headers["x-job-status"] == "running"
            assert held <= len(lines_of(response.content)) <= LINES
