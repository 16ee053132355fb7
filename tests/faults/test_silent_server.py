"""A NATS server that accepts connections and never says a word (a wedged or paused node) is the
first of the projector's servers: the projector must give up on it in time and use the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faults import figures
from tests.faults.cluster import FaultCluster, is_terminal, now
from tests.faults.invariants import lines_problems, outcome, settle_lines

# Generous next to any connect deadline a service should have (nats-py's is 2 s).
PROJECTED_TIMEOUT = 30.0


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """A TCP server that accepts and then stays silent, reading until the client goes."""
    held: set[asyncio.StreamWriter] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.add(writer)
        await reader.read()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"nats://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()


async def test_projector_skips_a_silent_server_and_projects(
    cluster: FaultCluster, silent_url: str
) -> None:
    """With a silent server first in its list, the projector still stores every line of a job."""
    cluster.services["projector"].kill()
    projector = cluster.add_service(
        "projector-silent-first", "projector", nats_url=f"{silent_url},{cluster.nats.url}"
    )
    job = await cluster.submit("free", lines=20, interval=0)
    problems: list[str] = []
    row = None
    started = now()
    try:
        projector.spawn()
        row = await cluster.wait_job(job.id, is_terminal, PROJECTED_TIMEOUT)
        if row is None or row.status != "completed":
            problems.append(
                f"job {outcome(row)} {PROJECTED_TIMEOUT:.0f} s after the projector started"
            )
        problems += lines_problems(job, job.run(), await settle_lines(cluster, job, 5))
        if problems:
            last = projector.log_file.read_text(errors="replace").strip().splitlines()[-1:]
            problems.append(f"the projector's last log line: {last}")
    finally:
        projected_s = now() - started if row is not None and is_terminal(row) else None
        figures.record(
            figures.Figure(
                fault="projector's first NATS server accepts and stays silent",
                outcome=outcome(row),
                printed=len(job.run().lines),
                stored=await cluster.stored_count(job.id),
                recovery_s=None,
                terminal_s=projected_s,
                holds=not problems,
                note="; ".join(problems),
            )
        )
        projector.kill()
        del cluster.services[projector.name]
        await cluster.start_service("projector")
    assert not problems, "\n".join(problems)
