"""The notifier hurt while it delivers: SIGKILLed with a POST in flight, and NATS paused (for
less and for more than the notifier's ack wait, 2 s here). Whatever happens, the webhook ends
delivered, every POST of it carries the one delivery id, and its attempts are numbered without
gap or repeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jobrunner.services.notifier import signature
from tests.faults import figures
from tests.faults.cluster import FaultCluster, now
from tests.webhook_receiver import Receiver, running_receiver

ACK_WAIT = 2.0
SECRET = "fault-secret"


@pytest.fixture
async def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    if "notifier" not in short_ttl_cluster.services:
        short_ttl_cluster.add_service(
            "notifier",
            "notifier",
            webhook_secret=SECRET,
            webhook_allow_hosts="127.0.0.1",
            webhook_first_retry_seconds=0.1,
            webhook_longest_retry_seconds=0.5,
            webhook_timeout_seconds=30.0,
            notifier_ack_wait_seconds=ACK_WAIT,
        )
    if not short_ttl_cluster.services["notifier"].alive:
        await short_ttl_cluster.start_service("notifier")
    return short_ttl_cluster


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


async def start_job(cluster: FaultCluster, url: str, label: str) -> str:
    async with cluster.client() as client:
        response = await client.post(
            "/api/jobs",
            json={
                "job_type": "free",
                "parameters": {
                    "lines": 1,
                    "record": str(cluster.records / f"{label}.txt"),
                    "label": label,
                },
                "webhook": {"url": url},
            },
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def attempts(cluster: FaultCluster, job_id: str) -> list[tuple[int, str]]:
    rows = await cluster.query(
        "SELECT attempt, outcome FROM readmodel.webhook_deliveries WHERE job_id = $1 "
        "ORDER BY attempt",
        job_id,
    )
    return [(r["attempt"], r["outcome"]) for r in rows]


async def settle(cluster: FaultCluster, job_id: str, timeout: float) -> list[tuple[int, str]]:
    """The job's attempts once the last one is final (or as they are after ``timeout``)."""
    seen: list[tuple[int, str]] = []
    try:
        async with asyncio.timeout(timeout):
            while not (seen and seen[-1][1] != "retrying"):
                seen = await attempts(cluster, job_id)
                await asyncio.sleep(0.1)  # another process writes them: poll
    except TimeoutError:
        pass
    return seen


def problems_of(
    job_id: str, receiver: Receiver, seen: list[tuple[int, str]], expect_final: str
) -> list[str]:
    problems = []
    ids = {r.headers.get("x-jobrunner-delivery") for r in receiver.received}
    if ids != {signature.delivery_id(job_id, 0)}:
        problems.append(f"delivery ids {ids}")
    bad = [
        r
        for r in receiver.received
        if r.headers.get("x-jobrunner-signature") != signature.sign(SECRET, r.body)
    ]
    if bad:
        problems.append(f"{len(bad)} POSTs with a wrong signature")
    if [n for n, _ in seen] != list(range(1, len(seen) + 1)):
        problems.append(f"attempt numbers {[n for n, _ in seen]}")
    if not seen or seen[-1][1] != expect_final:
        problems.append(f"last attempt {seen[-1] if seen else None}, expected {expect_final}")
    return problems


def record(
    fault: str, seen: list[tuple[int, str]], receiver: Receiver, start: float, problems: list[str]
) -> None:
    figures.record(
        figures.Figure(
            fault=fault,
            outcome=f"webhook {seen[-1][1] if seen else 'none'}",
            printed=len(receiver.received),
            stored=len(seen),
            recovery_s=None,
            terminal_s=round(now() - start, 1),
            holds=not problems,
            note="; ".join(["POSTs / attempts stored", *problems]),
        )
    )


async def test_notifier_killed_mid_delivery_delivers_after_restart_with_same_id(
    cluster: FaultCluster, receiver: Receiver
) -> None:
    """The notifier SIGKILLed while its POST is in flight: once it is back the webhook is
    delivered with the same delivery id (the receiver saw it twice and can de-duplicate)."""
    receiver.delay = lambda n: 30.0 if n == 1 else 0.0  # the first POST hangs until the kill
    job_id = await start_job(cluster, receiver.url, "hook-kill")
    await receiver.wait_for(1, timeout=60)
    cluster.services["notifier"].kill()
    fault_end = now()
    await cluster.start_service("notifier")
    await receiver.wait_for(2, timeout=60)
    seen = await settle(cluster, job_id, 60)
    problems = problems_of(job_id, receiver, seen, "delivered")
    record("notifier SIGKILLed mid-POST", seen, receiver, fault_end, problems)
    assert not problems, problems


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(1.0, id="1s-below-ack-wait"), pytest.param(4.0, id="4s-above-ack-wait")],
)
async def test_nats_paused_while_delivering_ends_delivered_once_per_attempt(
    cluster: FaultCluster, receiver: Receiver, seconds: float
) -> None:
    """NATS frozen while the receiver holds the first POST (then answers 503): the attempt is
    recorded once NATS is back, the retry delivers, the delivery id never changes."""
    receiver.delay = lambda n: 1.0 if n == 1 else 0.0
    receiver.answer = lambda n: 503 if n == 1 else 200
    job_id = await start_job(cluster, receiver.url, f"hook-pause-{seconds:g}")
    await receiver.wait_for(1, timeout=60)
    cluster.pause_nats()
    try:
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
    fault_end = now()
    seen = await settle(cluster, job_id, 60)
    problems = problems_of(job_id, receiver, seen, "delivered")
    record(f"NATS paused {seconds:g} s mid-delivery", seen, receiver, fault_end, problems)
    assert not problems, problems
