"""SSE memory is bounded in bytes: a viewer that stops reading is cut off and resumes losslessly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.wide_viewers import (
    CLIENT_BYTES,
    EXPECTED,
    FLOOD_LEASE_TTL,
    JOB_TYPES,
    fanout_of,
    read_to_the_end,
    resume,
    stall_until_cut,
    stalling_client,
    start_wide,
    texts,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def job_types(tmp_path: Path) -> str:
    path = tmp_path / "jobtypes.toml"
    path.write_text(JOB_TYPES)
    return str(path)


class TestPerClientBacklog:
    @pytest.fixture
    def settings(self, settings: Settings, job_types: str) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=job_types,
            sse_client_buffer_bytes=CLIENT_BYTES,
            sse_total_buffer_bytes=64 * CLIENT_BYTES,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
        )

    async def test_a_stalled_viewer_is_cut_and_resumes_with_every_line_once(
        self, system: System
    ) -> None:
        """A viewer that stops reading in a flood is disconnected; its reconnect loses nothing."""
        job_id = await start_wide(system)
        path = f"/jobs/stream/{job_id}"
        async with stalling_client(system) as slow, system.client() as client:
            first = await stall_until_cut(slow, path, fanout_of(system))
            rest = await resume(client, path, first)
        assert not first or first[-1].event != "done"
        assert texts(first) + texts(rest) == EXPECTED
        assert rest[-1].event == "done"

    async def test_a_stalled_viewer_does_not_disturb_a_live_one(self, system: System) -> None:
        """While one viewer stalls and is cut, another reads the whole flood, every line once."""
        job_id = await start_wide(system)
        path = f"/jobs/stream/{job_id}"
        async with stalling_client(system) as slow, system.client() as client:
            live = asyncio.create_task(read_to_the_end(client, path))
            await stall_until_cut(slow, path, fanout_of(system))
            events = await live
        assert texts(events) == EXPECTED
        assert events[-1].event == "done"


class TestProcessTotal:
    @pytest.fixture
    def settings(self, settings: Settings, job_types: str) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=job_types,
            sse_client_buffer_bytes=64 * CLIENT_BYTES,
            sse_total_buffer_bytes=CLIENT_BYTES,
            lease_ttl_seconds=FLOOD_LEASE_TTL,
        )

    async def test_the_process_total_is_capped_by_cutting_the_largest_backlog(
        self, system: System
    ) -> None:
        """Stalled viewers under their own limit are still cut once the API's total is reached."""
        job_id = await start_wide(system)
        path = f"/jobs/stream/{job_id}"
        fanout = fanout_of(system)
        async with stalling_client(system) as slow, system.client() as client:
            first = await stall_until_cut(slow, path, fanout)
            rest = await resume(client, path, first)
        assert fanout.peak_buffered_bytes <= CLIENT_BYTES
        assert texts(first) + texts(rest) == EXPECTED
