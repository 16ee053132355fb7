"""A job of a queued lock whose JobRequested's ack the API never got (NATS SIGKILLed and started
again once it stored the request, or frozen past the 5 s publish timeout): the POST answers 503,
the job is stored all the same. It must keep its place in the lock's queue (the API put it
there before publishing) and run there, once, whether or not the client sends the POST again
with its Idempotency-Key. And a request that never reached JetStream (swallowed on the way)
must leave nothing that blocks the lock: the next job of that lock runs.

The runners are stopped while the jobs are posted, so the queue alone decides the order: a
runner handling a job missing from its queue puts it at the end (``claim._is_queue_head``),
behind the jobs posted after it, which is what happened before the API kept the entry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import nats.js.errors
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import API_PUBLISH_TIMEOUT_SECONDS, QUEUE_ORPHAN_MIN_SECONDS
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.service import request_ack_wait
from tests.ackholding_proxy import AckHoldingProxy
from tests.faults.clients import until_answered
from tests.faults.cluster import is_terminal
from tests.faults.proxied import Fault, ProxiedCluster, proxied_cluster, strike_at_ack
from tests.tools.status_history import statuses

PUBLISH_TIMEOUT = API_PUBLISH_TIMEOUT_SECONDS  # nats-py's, which the API's publish keeps
LEASE_TTL = 20.0  # outlasts every fault
# A dead queue entry (its request not in the stream) is dropped by the lock's next waiter once
# it is this old (the cluster's queue_orphan_seconds, short here; 30 s by default): the lowest
# the setting takes, plus a second.
QUEUE_ORPHAN_SECONDS = QUEUE_ORPHAN_MIN_SECONDS + 1.0
# How often a waiting job looks at its queue's head again (runner/service.py).
RECHECK_SECONDS = request_ack_wait(LEASE_TTL) / 3


@dataclass
class Setup:
    cluster: ProxiedCluster
    proxy: AckHoldingProxy


@pytest.fixture(scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with proxied_cluster(LEASE_TTL, {"api"}, queue_orphan_seconds=QUEUE_ORPHAN_SECONDS) as (
        cluster,
        proxy,
    ):
        yield Setup(cluster, proxy)


class LockJobs:
    """Jobs of one queued lock, each recording its own run (tools/numbered.py)."""

    def __init__(self, cluster: ProxiedCluster) -> None:
        self.cluster = cluster
        self.job_type = cluster.fresh_lock_type()
        self.tag = uuid.uuid4().hex[:8]

    def record(self, label: str) -> Path:
        return self.cluster.records / f"{self.tag}-{label}.txt"

    def post(
        self, client: httpx.AsyncClient, label: str, key: str | None = None
    ) -> Awaitable[httpx.Response]:
        parameters = {"lines": 1, "record": str(self.record(label)), "label": label}
        return client.post(
            "/api/jobs",
            json={"job_type": self.job_type, "parameters": parameters},
            headers={"Idempotency-Key": key} if key else {},
        )

    def key(self, label: str) -> str:
        """The Idempotency-Key of the job ``label``, for a POST sent until answered."""
        return f"{self.tag}-{label}"

    def starts(self, label: str) -> list[float]:
        """When the tool of the job ``label`` started, each time it did."""
        record = self.record(label)
        text = record.read_text() if record.exists() else ""
        return [float(f.split()[1]) for f in text.splitlines() if f.startswith("start ")]

    async def ids(self) -> list[str]:
        rows = await self.cluster.query(
            "SELECT id FROM readmodel.jobs WHERE job_type = $1 ORDER BY created_at", self.job_type
        )
        return [r["id"] for r in rows]

    async def queue_keys(self) -> list[str]:
        """The lock's queue entries left in the lock bucket."""
        nc = await nats.connect(self.cluster.nats.url)
        try:
            kv = await nc.jetstream().key_value(Names(self.cluster.settings.prefix).locks_bucket)
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                return []
            return [k for k in keys if k.startswith(f"queue.{self.job_type}.")]
        finally:
            await nc.close()


async def _runners(cluster: ProxiedCluster, up: bool) -> None:
    names = [name for name in cluster.services if name.startswith("runner-")]
    if up:
        down = [name for name in names if not cluster.services[name].alive]
        await asyncio.gather(*(cluster.start_service(name) for name in down))
    else:
        await asyncio.gather(*(asyncio.to_thread(cluster.services[n].stop) for n in names))


async def _restart_ran_in_its_place(cluster: ProxiedCluster, jobs: LockJobs) -> list[str]:
    """X ran, A was posted, X restarted, C posted: four jobs (attempts) stored, each ended, A
    and C started once and X twice, X's attempt between A and C, no queue entry left."""
    problems: list[str] = []
    ids = await jobs.ids()
    if len(ids) != 4:
        problems.append(f"{len(ids)} jobs (attempts) stored, not 4: {ids}")
    problems += await _all_ended(cluster, ids, 60)
    starts = {label: jobs.starts(label) for label in "axc"}
    if [len(starts[label]) for label in "axc"] != [1, 2, 1]:
        problems.append(f"A and C should have started once, X twice: {starts}")
    elif not starts["a"][0] < starts["x"][1] < starts["c"][0]:
        problems.append(f"A, X's attempt and C should have run in that order: {starts}")
    if left := await jobs.queue_keys():
        problems.append(f"queue entries left: {left}")
    return problems


async def _all_ended(cluster: ProxiedCluster, job_ids: list[str], timeout: float) -> list[str]:
    problems = []
    for job_id in job_ids:
        row = await cluster.wait_job(job_id, is_terminal, timeout)
        if row is None or row.status != "completed":
            problems.append(f"job {job_id} should have completed, is {row}")
        else:
            nc = await nats.connect(cluster.nats.url)
            try:
                history = await statuses(nc.jetstream(), Names(cluster.settings.prefix), job_id)
            finally:
                await nc.close()
            if history != ["running", "completed"]:
                problems.append(f"job {job_id}'s status subject: {history}")
    return problems


ACK_FAULTS = [
    pytest.param(Fault(True, 0.0), True, id="killed-restarted-retried"),
    pytest.param(Fault(True, 0.0), False, id="killed-restarted-not-retried"),
    pytest.param(Fault(False, PUBLISH_TIMEOUT + 1.5), True, id="frozen-6.5s-retried"),
    pytest.param(Fault(False, PUBLISH_TIMEOUT + 1.5), False, id="frozen-6.5s-not-retried"),
    pytest.param(Fault(False, PUBLISH_TIMEOUT - 1.0), False, id="frozen-4s"),
]


@pytest.mark.parametrize(("fault", "retried"), ACK_FAULTS)
async def test_queued_job_whose_request_ack_was_lost_runs_once_in_its_place(
    setup: Setup, fault: Fault, retried: bool
) -> None:
    """A, then B under the fault at its request's ack, then C: they run A, B, C, once each."""
    cluster, proxy = setup.cluster, setup.proxy
    jobs = LockJobs(cluster)
    key = f"queue-ack-{jobs.tag}"
    problems: list[str] = []
    await _runners(cluster, up=False)
    try:
        async with cluster.client() as client:
            first = await jobs.post(client, "a")
            assert first.status_code == 201, first.text
            request = asyncio.create_task(jobs.post(client, "b", key))
            failed = await strike_at_ack(
                cluster, proxy, fault, f"{cluster.settings.prefix}.job.", True
            )
            assert failed is None, failed
            answer = await asyncio.wait_for(request, 60)
            # The premise: past the publish timeout (a kill loses the ack) the POST fails.
            expected = 503 if fault.kill or fault.seconds > PUBLISH_TIMEOUT else 201
            assert answer.status_code == expected, f"{fault}: {answer.status_code} {answer.text}"
            if answer.status_code == 503:
                code = answer.json()["error"]["code"]
                assert code == "EVENT_STORE_UNAVAILABLE", answer.text
            third = await until_answered(lambda: jobs.post(client, "c", jobs.key("c")))
            assert third.status_code == 201, third.text
            if retried:
                again = await until_answered(lambda: jobs.post(client, "b", key))
                if again.status_code != 201:
                    problems.append(f"B sent again: {again.status_code} {again.text}")
        await _runners(cluster, up=True)
        ids = await jobs.ids()
        if len(ids) != 3:
            problems.append(f"{len(ids)} jobs stored, not 3: {ids}")
        problems += await _all_ended(cluster, ids, 60)
        starts = {label: jobs.starts(label) for label in "abc"}
        if any(len(times) != 1 for times in starts.values()):
            problems.append(f"each job's tool should have started once: {starts}")
        elif not starts["a"][0] < starts["b"][0] < starts["c"][0]:
            order = sorted(starts, key=lambda label: starts[label][0])
            problems.append(f"the jobs ran in the order {order}, not their queue's a, b, c")
        if left := await jobs.queue_keys():
            problems.append(f"queue entries left: {left}")
    finally:
        await _runners(cluster, up=True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "cut_after",
    [
        pytest.param(0.0, id="cut-at-once"),
        pytest.param(PUBLISH_TIMEOUT + 1.5, id="cut-after-the-publish-timed-out"),
    ],
)
async def test_request_that_never_reached_jetstream_leaves_the_lock_free(
    setup: Setup, cut_after: float
) -> None:
    """B's request swallowed on its way to NATS (never stored), the API's connection cut at
    once (its ack lost with it) or once its publish timed out: B's POST fails, B never runs,
    and C, posted next, runs (once B's queue entry, kept for an outcome the API could not know,
    is found dead) and leaves the queue empty."""
    cluster, proxy = setup.cluster, setup.proxy
    jobs = LockJobs(cluster)
    problems: list[str] = []
    async with cluster.client() as client:
        proxy.arm(f"{cluster.settings.prefix}.job.", prefix=True, swallow=True)
        request = asyncio.create_task(jobs.post(client, "b"))
        try:
            async with asyncio.timeout(30):
                await proxy.hit.wait()
            await asyncio.sleep(cut_after)
        finally:
            proxy.cut()
        answer = await asyncio.wait_for(request, 60)
        assert answer.status_code == 503, f"{answer.status_code} {answer.text}"
        third = await until_answered(lambda: jobs.post(client, "c", jobs.key("c")))
        assert third.status_code == 201, third.text
    ids = await jobs.ids()
    if ids != [third.json()["id"]]:
        problems.append(f"the jobs stored should be C's alone: {ids}")
    orphan = cluster.settings.queue_orphan_seconds
    problems += await _all_ended(cluster, ids, orphan + RECHECK_SECONDS + 30)
    if jobs.starts("b"):
        problems.append("B's tool ran")
    if len(jobs.starts("c")) != 1:
        problems.append(f"C's tool should have started once: {jobs.starts('c')}")
    if left := await jobs.queue_keys():
        problems.append(f"queue entries left: {left}")
    assert not problems, "\n".join(problems)


# A restart publishes its attempt in a pipeline whose ack it waits 5 s for, then once more with
# the 5 s publish timeout (eventstore.publish_many): it fails only past both.
RESTART_FAULTS = [
    pytest.param(2 * PUBLISH_TIMEOUT - 1.0, 201, id="frozen-9s"),
    pytest.param(2 * PUBLISH_TIMEOUT + 1.0, 503, id="frozen-11s"),
]


@pytest.mark.parametrize(("frozen", "expected"), RESTART_FAULTS)
async def test_restarted_queued_job_whose_attempt_ack_was_lost_runs_once_in_its_place(
    setup: Setup, frozen: float, expected: int
) -> None:
    """X ran; then A, X restarted under the fault at its new attempt's ack, C: they run A, X's
    attempt, C, once each (the restart's 503 kept the attempt's queue entry)."""
    cluster, proxy = setup.cluster, setup.proxy
    jobs = LockJobs(cluster)
    problems: list[str] = []
    async with cluster.client() as client:
        ran = await jobs.post(client, "x")
        assert ran.status_code == 201, ran.text
        x = ran.json()["id"]
        problems += await _all_ended(cluster, [x], 60)
    await _runners(cluster, up=False)
    try:
        async with cluster.client() as client:
            first = await jobs.post(client, "a")
            assert first.status_code == 201, first.text
            request = asyncio.create_task(client.post(f"/api/jobs/{x}/restart"))
            fault = Fault(False, frozen)
            subject = f"{cluster.settings.prefix}.job."
            failed = await strike_at_ack(cluster, proxy, fault, subject, True)
            assert failed is None, failed
            answer = await asyncio.wait_for(request, 60)
            assert answer.status_code == expected, f"{fault}: {answer.status_code} {answer.text}"
            if answer.status_code == 503:
                code = answer.json()["error"]["code"]
                assert code == "EVENT_STORE_UNAVAILABLE", answer.text
            again = await until_answered(lambda: client.post(f"/api/jobs/{x}/restart"))
            # The attempt is stored: the restart sent again finds it pending.
            if again.status_code != 409 or again.json()["error"]["code"] != "JOB_ACTIVE":
                problems.append(f"the restart sent again: {again.status_code} {again.text}")
            third = await until_answered(lambda: jobs.post(client, "c", jobs.key("c")))
            assert third.status_code == 201, third.text
        await _runners(cluster, up=True)
        problems += await _restart_ran_in_its_place(cluster, jobs)
    finally:
        await _runners(cluster, up=True)
    assert not problems, "\n".join(problems)


async def test_restart_whose_resend_was_refused_after_its_attempt_was_stored_keeps_its_place(
    setup: Setup,
) -> None:
    """X ran; A posted; X restarted: its attempt stored, the ack held past publish_many's 5 s
    wait, and the attempt's resend refused by JetStream (the stream's max_msg_size lowered
    meanwhile: a refusal that, on a single publish, proves nothing stored). The restart fails
    (503), or, when the held ack reaches the API with the refusal, answers 201 (the first copy's
    ack taken, ``eventstore._stored_again``); either way its attempt is stored: it keeps its
    place and runs between A and C."""
    cluster, proxy = setup.cluster, setup.proxy
    jobs = LockJobs(cluster)
    problems: list[str] = []
    async with cluster.client() as client:
        ran = await jobs.post(client, "x")
        assert ran.status_code == 201, ran.text
        x = ran.json()["id"]
        problems += await _all_ended(cluster, [x], 60)
    await _runners(cluster, up=False)
    nc = await nats.connect(cluster.nats.url)
    try:
        js = nc.jetstream()
        stream = Names(cluster.settings.prefix).stream
        config = (await js.stream_info(stream)).config
        async with cluster.client() as client:
            first = await jobs.post(client, "a")
            assert first.status_code == 201, first.text
            proxy.arm(f"{cluster.settings.prefix}.job.", prefix=True)
            request = asyncio.create_task(client.post(f"/api/jobs/{x}/restart"))
            try:
                async with asyncio.timeout(30):
                    await proxy.hit.wait()
                assert await proxy.stored(), "the attempt was not stored"
                await js.update_stream(config.evolve(max_msg_size=64))
                await asyncio.sleep(eventstore.ACK_WAIT_SECONDS + 1.5)  # the resend refused
            finally:
                proxy.release()
            answer = await asyncio.wait_for(request, 60)
            await js.update_stream(config)
            assert answer.status_code in (201, 503), f"{answer.status_code} {answer.text}"
            third = await until_answered(lambda: jobs.post(client, "c", jobs.key("c")))
            assert third.status_code == 201, third.text
    finally:
        await js.update_stream(config)
        await nc.close()
        await _runners(cluster, up=True)
    problems += await _restart_ran_in_its_place(cluster, jobs)
    assert not problems, "\n".join(problems)


async def test_a_503_whose_job_may_be_stored_names_the_job(setup: Setup) -> None:
    """B posted without an Idempotency-Key, its ack lost with a NATS restart after B was
    stored: B keeps its place and will run, so the 503 names it (``job_id``), or a client doing
    what a bare 503 says (try again) makes a second job that runs as well."""
    cluster, proxy = setup.cluster, setup.proxy
    jobs = LockJobs(cluster)
    await _runners(cluster, up=False)
    try:
        async with cluster.client() as client:
            request = asyncio.create_task(jobs.post(client, "b"))
            failed = await strike_at_ack(
                cluster, proxy, Fault(True, 0.0), f"{cluster.settings.prefix}.job.", True
            )
            assert failed is None, failed
            answer = await asyncio.wait_for(request, 60)
            assert answer.status_code == 503, answer.text
        ids = await jobs.ids()
        assert len(ids) == 1, ids  # B is stored: it will run
        error = answer.json()["error"]
        assert error["code"] == "EVENT_STORE_UNAVAILABLE", answer.text
        assert error.get("job_id") == ids[0], f"the 503 does not name the stored job: {error}"
        assert f"/api/jobs/{ids[0]}" in error["message"], error
    finally:
        await _runners(cluster, up=True)


async def test_kept_entry_younger_than_the_orphan_age_is_not_dropped(setup: Setup) -> None:
    """B's queue entry written, its JobRequested not stored yet (as while the API's publish is
    slow); C posted behind it with the runners up, so C's runner finds B at the head, not in
    the stream. B's request stored a little before the entry is queue_orphan_seconds old: B's
    entry was not dropped, and B runs in its place, before C (the case past the age is
    ``test_request_that_never_reached_jetstream_leaves_the_lock_free``)."""
    cluster = setup.cluster
    jobs = LockJobs(cluster)
    names = Names(cluster.settings.prefix)
    parameters = {"lines": 1, "record": str(jobs.record("b")), "label": "b"}
    b = events.JobRequested(
        job_id=events.new_job_id(),
        job_type=jobs.job_type,
        parameters=parameters,
        lock=jobs.job_type,
        requested_by="anonymous",
    )
    nc = await nats.connect(cluster.nats.url)
    try:
        js = nc.jetstream()
        await SlotTable(js, names, ttl_seconds=LEASE_TTL).enqueue(
            jobs.job_type, b.job_id, jobs.job_type
        )
        queued = asyncio.get_running_loop().time()
        async with cluster.client() as client:
            third = await jobs.post(client, "c")
            assert third.status_code == 201, third.text
        await asyncio.sleep(queued + cluster.settings.queue_orphan_seconds - 2.0 - _now())
        await eventstore.publish(js, names, b)
    finally:
        await nc.close()
    problems = await _all_ended(cluster, [b.job_id, third.json()["id"]], 60)
    starts = {label: jobs.starts(label) for label in "bc"}
    if any(len(times) != 1 for times in starts.values()):
        problems.append(f"each job's tool should have started once: {starts}")
    elif not starts["b"][0] < starts["c"][0]:
        problems.append(f"C ran before B: B's entry was dropped while young: {starts}")
    if left := await jobs.queue_keys():
        problems.append(f"queue entries left: {left}")
    assert not problems, "\n".join(problems)


def _now() -> float:
    return asyncio.get_running_loop().time()
