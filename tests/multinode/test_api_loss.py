"""One of two API instances lost on the cluster: its SSE clients go on at the other (each
client tries the two addresses in turn, as a load balancer would) and resume by Last-Event-ID
with nothing lost or repeated; a token or a browser session from one instance works on the
other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from jobrunner.services.api.security.sessions import COOKIE_NAME
from tests.cluster import NodeCluster
from tests.faults.cluster import is_terminal, now
from tests.faults.invariants import lines_problems, outcome, settle_lines
from tests.faults.scenarios import SETTLE_SECONDS
from tests.faults.viewers import Viewer
from tests.multinode import figures

CLIENTS = 100
# Viewers are people with tokens of their own: each token may hold max_streams_per_token (32)
# streams per instance, and all of the lost instance's viewers land on the other one.
CLIENTS_PER_TOKEN = 20
# The job prints 20 lines/s for up to 100 s, so it is still printing when the instance dies
# however long 100 clients take to connect on a loaded machine; once every client has lines
# from the other instance, it is cancelled (its clients then get done).
LINES = 2000
INTERVAL = 0.05
FOLLOW_TIMEOUT = 90.0


@contextlib.asynccontextmanager
async def clients_of(
    cluster: NodeCluster, token: str, connections: int
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """One HTTP client per API instance, both with ``token``."""

    def client(api: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=cluster.api_url(api),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30, read=None),
            limits=httpx.Limits(max_connections=connections),
        )

    async with client(0) as first, client(1) as second:
        yield first, second


async def test_sse_clients_of_a_killed_api_resume_on_the_other_without_gap_or_duplicate(
    node_cluster: NodeCluster,
) -> None:
    """API instance killed under 100 live viewers: each goes on at the other instance and gets
    every line once, in order, and one done (the job is cancelled once all have moved)."""
    cluster = node_cluster
    victim = cluster.api_names[0]
    job = await cluster.submit(cluster.fresh_lock_type(), lines=LINES, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 1, 60) >= 1
    tokens = [
        await cluster.create_token(f"viewer-{job.label}-{n}", role="viewer")
        for n in range(CLIENTS // CLIENTS_PER_TOKEN)
    ]
    viewers = [Viewer(job.id) for _ in range(CLIENTS)]
    problems: list[str] = []
    row = None
    recovery = terminal_s = None
    async with contextlib.AsyncExitStack() as stack:
        pairs = [
            await stack.enter_async_context(clients_of(cluster, token, CLIENTS_PER_TOKEN * 2))
            for token in tokens
        ]
        # Every viewer's first connection goes to the first instance, the one that dies.
        tasks = [
            asyncio.create_task(viewer.follow(*pairs[n // CLIENTS_PER_TOKEN]))
            for n, viewer in enumerate(viewers)
        ]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(v.got_line.wait() for v in viewers))
            cluster.services[victim].kill()
            fault_end = now()
            for viewer in viewers:
                viewer.got_line.clear()
            # Recovery as the viewers see it: until every one of them has a line again.
            async with asyncio.timeout(60):
                await asyncio.gather(*(v.got_line.wait() for v in viewers))
            recovery = now() - fault_end
            async with cluster.client(1) as survivor_client:
                cancelled = await survivor_client.delete(f"/api/jobs/{job.id}")
            assert cancelled.status_code == 202, cancelled.text
            try:
                async with asyncio.timeout(FOLLOW_TIMEOUT):
                    await asyncio.gather(*tasks)
            except TimeoutError:
                problems.append(
                    f"{sum(v.dones == 0 for v in viewers)} clients never got done "
                    f"within {FOLLOW_TIMEOUT:.0f} s"
                )
            row = await cluster.wait_job(job.id, is_terminal, 30)
            terminal_s = now() - fault_end if row is not None and is_terminal(row) else None
            if row is None or row.status != "cancelled":
                problems.append(f"job should end cancelled, is {outcome(row)}")
            problems += lines_problems(
                job, job.run(), await settle_lines(cluster, job, SETTLE_SECONDS)
            )
            for n, viewer in enumerate(viewers, 1):
                problems += viewer.problems(n, len(job.run().lines))
            survivor = cluster.api_url(1)
            moved = sum(1 for v in viewers if v.served_by[-1:] == [survivor])
            if moved != CLIENTS:
                problems.append(f"{CLIENTS - moved} clients did not end on {survivor}")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            received = sorted({len(v.lines) for v in viewers})
            figures.record(
                figures.Figure(
                    scenario=f"API instance SIGKILLed (1 of 2) under {CLIENTS} SSE clients",
                    outcome=outcome(row),
                    printed=len(job.run().lines),
                    stored=await cluster.stored_count(job.id),
                    received=f"{'/'.join(map(str, received))} x {CLIENTS} clients",
                    progressed_s=recovery,
                    election_s=None,
                    holds=not problems,
                    note="progressed: every client had a line from the other instance; then "
                    f"the job was cancelled, ended {figures.seconds(terminal_s)} s after the kill",
                )
            )
            if not cluster.services[victim].alive:  # else AlreadyRunning would hide the error
                await cluster.start_service(victim)
    assert not problems, "\n".join(problems[:20])


async def test_token_created_through_one_api_is_accepted_by_the_other(
    node_cluster: NodeCluster,
) -> None:
    """A token created through one API instance works at once on the other."""
    async with node_cluster.client(0) as first:
        created = await first.post("/api/tokens", json={"name": "made-on-api-1", "role": "viewer"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    async with node_cluster.client(1, headers={"Authorization": f"Bearer {token}"}) as second:
        me = await second.get("/api/me")
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "made-on-api-1"


async def test_browser_session_from_one_api_is_accepted_by_the_other(
    node_cluster: NodeCluster,
) -> None:
    """A browser signed in through one API instance stays signed in on the other."""
    token = await node_cluster.create_token("session-user", role="viewer")
    async with httpx.AsyncClient(base_url=node_cluster.api_url(0), timeout=30) as first:
        signed_in = await first.post("/login", data={"token": token, "next": "/jobs"})
    assert signed_in.status_code == 303, signed_in.text
    cookie = signed_in.cookies[COOKIE_NAME]
    async with httpx.AsyncClient(
        base_url=node_cluster.api_url(1), timeout=30, cookies={COOKIE_NAME: cookie}
    ) as second:
        me = await second.get("/api/me")
        page = await second.get("/jobs")
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "session-user"
    assert page.status_code == 200, page.status_code
