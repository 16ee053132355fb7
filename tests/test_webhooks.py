"""Webhooks end to end: a job's end POSTed by the notifier to a real local receiver, signed,
retried, refused where it may not go, logged as events and shown by the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.notifier import signature
from jobrunner.services.projector.replay import replay
from tests.system import System
from tests.tls_nats import make_certificates
from tests.tools.job_type_files import TEST_TYPES
from tests.webhook_receiver import Receiver, running_receiver
from tests.webhook_support import (
    SECRET,
    settled,
    start_job,
    webhook_log,
    webhook_settings,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return webhook_settings(settings)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


@pytest.fixture
async def notifying(system: System) -> System:
    await system.start_notifier()
    return system


async def test_ended_job_posts_signed_payload_to_its_webhook(
    notifying: System, receiver: Receiver
) -> None:
    """A job with a webhook: its receiver gets the seed's payload, signed, with its own header."""
    job_id = await start_job(
        notifying, {"url": receiver.url, "headers": {"Authorization": "Bearer receiver-token"}}
    )
    [got] = await receiver.wait_for(1)
    body = json.loads(got.body)
    assert got.path == "/hook"
    assert got.headers["x-jobrunner-signature"] == signature.sign(SECRET, got.body)
    assert got.headers["x-jobrunner-delivery"] == signature.delivery_id(job_id, 0)
    assert got.headers["x-jobrunner-event"] == "job.completed"
    assert got.headers["authorization"] == "Bearer receiver-token"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["connection"] == "close"  # the notifier never keeps a connection
    assert body["job_id"] == job_id
    assert body["job_type"] == "emit"
    assert body["status"] == "completed"
    assert body["progress"]["percent"] == 100.0
    assert body["progress"]["current"] == 3
    assert body["error"] is None
    assert body["delivery_id"] == signature.delivery_id(job_id, 0)
    log = await webhook_log(notifying, job_id, settled)
    [delivery] = log["deliveries"]
    assert delivery["state"] == "delivered"
    assert delivery["last_status_code"] == 200
    assert delivery["url"] == receiver.url


async def test_failed_job_payload_carries_its_error(notifying: System, receiver: Receiver) -> None:
    """A job that fails: the receiver gets status failed and the error's code and sentence."""
    job_id = await start_job(notifying, {"url": receiver.url}, exit_code=3)
    [got] = await receiver.wait_for(1)
    body = json.loads(got.body)
    assert body["job_id"] == job_id
    assert body["status"] == "failed"
    assert body["error"]["code"] == "EXIT_NONZERO"
    assert body["error"]["message"]
    assert got.headers["x-jobrunner-event"] == "job.failed"


async def test_job_without_webhook_posts_nothing(notifying: System, receiver: Receiver) -> None:
    """A job that names no webhook (and whose type names none) is delivered nowhere."""
    silent = await start_job(notifying, None)
    await start_job(notifying, {"url": receiver.url})  # ends after the first: a marker
    [got] = await receiver.wait_for(1)
    assert json.loads(got.body)["job_id"] != silent
    log = await webhook_log(notifying, silent, lambda log: True)
    assert log["deliveries"] == []


async def test_the_notifier_asks_for_one_status_at_a_time_while_none_are_waiting(
    notifying: System, receiver: Receiver
) -> None:
    """Each status of a job as it runs comes alone: the notifier's pulls ask for one (a pull for
    several would first probe for waiting ones, and then hold a lone end until it expired). It
    asks for several only right after a delivery that said more were waiting (a loaded machine
    lets statuses pile up: then taking them together is right)."""
    names = Names(notifying.settings.prefix)
    consumer = f"{names.stream}.{names.notifier_consumer}"
    # In the order the server routed them: the pulls, and copies of the deliveries to the
    # notifier's inbox (their reply subject ends with how many were still waiting).
    seen: list[tuple[str, int]] = []

    async def pulled(msg: Msg) -> None:
        seen.append(("pull", json.loads(msg.data)["batch"]))
        assert not json.loads(msg.data).get("no_wait")

    async def delivered(msg: Msg) -> None:
        if msg.reply.startswith(f"$JS.ACK.{consumer}."):
            seen.append(("delivery", int(msg.reply.rsplit(".", 1)[1])))

    nc = await nats.connect(notifying.settings.nats_url)
    try:
        await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{consumer}", cb=pulled)
        await nc.subscribe("_INBOX.>", cb=delivered)
        await nc.flush()
        for _ in range(2):
            await start_job(notifying, {"url": receiver.url})
        await receiver.wait_for(2)
        await nc.flush()
    finally:
        await nc.close()
    pulls = [batch for kind, batch in seen if kind == "pull"]
    assert any(kind == "delivery" for kind, _ in seen)  # the check below has something to go by
    assert 1 in pulls
    waiting = 0
    for kind, number in seen:
        if kind == "delivery":
            waiting = number
        else:
            assert number == 1 or waiting > 0, seen


async def test_receiver_failing_then_recovering_gets_it_with_the_same_delivery_id(
    notifying: System, receiver: Receiver
) -> None:
    """A receiver that answers 503 twice gets the third attempt: same delivery id, same body."""
    receiver.answer = lambda n: 503 if n <= 2 else 200
    job_id = await start_job(notifying, {"url": receiver.url})
    got = await receiver.wait_for(3)
    assert {r.headers["x-jobrunner-delivery"] for r in got} == {signature.delivery_id(job_id, 0)}
    assert len({r.body for r in got}) == 1
    log = await webhook_log(notifying, job_id, settled)
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in log["items"]] == [
        (1, "retrying", 503),
        (2, "retrying", 503),
        (3, "delivered", 200),
    ]
    assert log["items"][0]["error"]["code"] == "WEBHOOK_HTTP_ERROR"
    assert log["deliveries"][0]["attempts"] == 3


async def test_receiver_down_longer_than_the_retry_window_is_recorded_failed(
    system: System, receiver: Receiver
) -> None:
    """A receiver that keeps answering 500 past webhook_retry_seconds: the delivery is failed."""
    await system.start_notifier(webhook_retry_seconds=0.6)
    receiver.answer = lambda n: 500
    job_id = await start_job(system, {"url": receiver.url})
    log = await webhook_log(system, job_id, settled)
    [delivery] = log["deliveries"]
    assert delivery["state"] == "failed"
    assert delivery["attempts"] >= 2
    assert delivery["last_status_code"] == 500
    assert [a["outcome"] for a in log["items"]][-1] == "failed"
    assert len(receiver.received) == delivery["attempts"]


async def test_rejecting_receiver_is_not_retried(notifying: System, receiver: Receiver) -> None:
    """A receiver answering 404 (no retry can change it): failed after one attempt."""
    receiver.answer = lambda n: 404
    job_id = await start_job(notifying, {"url": receiver.url})
    log = await webhook_log(notifying, job_id, settled)
    assert [(a["outcome"], a["error"]["code"]) for a in log["items"]] == [
        ("failed", "WEBHOOK_REJECTED")
    ]


@pytest.mark.parametrize(
    ("held", "attempts"),
    [pytest.param(0.5, 1, id="answer-just-inside-timeout"), pytest.param(4.0, 2, id="past-it")],
)
async def test_slow_receiver_is_retried_only_past_the_read_timeout(
    notifying: System, receiver: Receiver, held: float, attempts: int
) -> None:
    """An answer slower than webhook_timeout_seconds (2 s) is a timeout and retried; one just
    faster is delivered at the first attempt."""
    receiver.delay = lambda n: held if n == 1 else 0.0
    job_id = await start_job(notifying, {"url": receiver.url})
    log = await webhook_log(notifying, job_id, settled)
    assert log["deliveries"][0]["state"] == "delivered"
    assert log["deliveries"][0]["attempts"] == attempts
    if attempts > 1:
        assert log["items"][0]["error"]["code"] == "WEBHOOK_TIMEOUT"


async def test_stopped_notifier_hands_a_retrying_webhook_to_another_at_once(
    system: System, receiver: Receiver
) -> None:
    """A notifier stopped while it waits to retry: another notifier goes on at once (not after
    the 60 s ack wait), with the same delivery id and the next attempt number."""
    # The first would wait a minute before its second attempt: only a hand-over delivers in time.
    await system.start_notifier(
        "first",
        notifier_ack_wait_seconds=60.0,
        webhook_first_retry_seconds=60.0,
        webhook_longest_retry_seconds=60.0,
    )
    receiver.answer = lambda n: 503 if n == 1 else 200
    job_id = await start_job(system, {"url": receiver.url})
    await webhook_log(system, job_id, lambda log: len(log["items"]) == 1)
    await system.start_notifier("second", notifier_ack_wait_seconds=60.0)
    await system.stop_service("first")
    log = await webhook_log(system, job_id, settled, timeout=30)
    assert [(a["attempt"], a["outcome"]) for a in log["items"]] == [
        (1, "retrying"),
        (2, "delivered"),
    ]
    assert {r.headers["x-jobrunner-delivery"] for r in receiver.received} == {
        signature.delivery_id(job_id, 0)
    }


async def test_loopback_webhook_is_refused_by_default(system: System, receiver: Receiver) -> None:
    """Without an allow-list entry, a webhook to loopback is refused and never connected to."""
    await system.start_notifier(webhook_allow_hosts="")
    job_id = await start_job(system, {"url": receiver.url})
    log = await webhook_log(system, job_id, settled)
    [attempt] = log["items"]
    assert attempt["outcome"] == "failed"
    assert attempt["error"]["code"] == "WEBHOOK_ADDRESS_REFUSED"
    assert "loopback" in attempt["error"]["message"]
    assert receiver.received == []


async def test_redirecting_receiver_is_not_followed(notifying: System, receiver: Receiver) -> None:
    """A receiver answering 302: recorded failed WEBHOOK_REDIRECT_REFUSED, nothing followed."""
    receiver.answer = lambda n: 302
    job_id = await start_job(notifying, {"url": receiver.url})
    log = await webhook_log(notifying, job_id, settled)
    assert [(a["outcome"], a["status_code"], a["error"]["code"]) for a in log["items"]] == [
        ("failed", 302, "WEBHOOK_REDIRECT_REFUSED")
    ]
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("webhook", "code"),
    [
        ({"url": "ftp://example.com/x"}, "UNSUPPORTED_SCHEME"),
        ({"url": "http://user:pw@example.com/"}, "USERINFO_NOT_ALLOWED"),
        (
            {"url": "https://example.com/", "headers": {"X-A": "b\r\nX-B: c"}},
            "INVALID_HEADER_VALUE",
        ),
        ({"url": "https://example.com/", "headers": {"X-Name": "Müller"}}, "INVALID_HEADER_VALUE"),
        ({"url": "https://example.com/", "headers": {"X-Name": "x "}}, "INVALID_HEADER_VALUE"),
        ({"url": "https://\u0080.example/"}, "INVALID_URL"),
    ],
)
async def test_api_refuses_a_bad_webhook_and_publishes_nothing(
    notifying: System, webhook: dict[str, object], code: str
) -> None:
    """A bad webhook answers 422 INVALID_WEBHOOK naming the problem; no job is started."""
    async with notifying.client() as client:
        response = await client.post("/api/jobs", json={"job_type": "emit", "webhook": webhook})
        jobs = (await client.get("/api/jobs")).json()["items"]
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_WEBHOOK"
    assert [f["code"] for f in error["fields"]] == [code]
    assert jobs == []


async def test_api_refuses_a_header_that_would_override_the_signature(
    notifying: System, receiver: Receiver
) -> None:
    """POST /api/jobs with an X-Jobrunner-Signature webhook header: 422 RESERVED_HEADER."""
    async with notifying.client() as client:
        response = await client.post(
            "/api/jobs",
            json={
                "job_type": "emit",
                "webhook": {"url": receiver.url, "headers": {"X-Jobrunner-Signature": "x"}},
            },
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_WEBHOOK"
    assert error["fields"][0]["code"] == "RESERVED_HEADER"


async def test_header_in_an_event_cannot_override_the_signature(
    notifying: System, receiver: Receiver, settings: Settings
) -> None:
    """A JobRequested written by another producer with forged jobrunner headers: the receiver
    still gets only the notifier's signature and delivery id."""
    request = events.JobRequested(
        job_id=events.new_event_id(),
        job_type="emit",
        parameters={"lines": 1, "interval": "0", "exit_code": 0, "stderr_every": 0},
        webhook=events.WebhookTarget(
            url=receiver.url,
            headers={"x-jobrunner-signature": "sha256=forged", "X-JOBRUNNER-DELIVERY": "forged"},
        ),
    )
    nc = await eventstore.connect(settings, "test")
    try:
        await eventstore.publish(nc.jetstream(), Names(settings.prefix), request)
    finally:
        await eventstore.close(nc)
    [got] = await receiver.wait_for(1)
    signatures = [v for k, v in got.header_list if k == "x-jobrunner-signature"]
    deliveries = [v for k, v in got.header_list if k == "x-jobrunner-delivery"]
    assert signatures == [signature.sign(SECRET, got.body)]
    assert deliveries == [signature.delivery_id(request.job_id, 0)]


@pytest.mark.parametrize(
    "webhook",
    [
        events.WebhookTarget(url="http://127.0.0.1:99999/hook"),
        events.WebhookTarget(url="http://[::1/hook"),
        events.WebhookTarget(url="http://127.0.0.1:1/hook", headers={"X-Name": "Müller"}),
        events.WebhookTarget(url="http://127.0.0.1:1/hook", headers={"X-Name": " padded "}),
    ],
    ids=["port-out-of-range", "broken-ipv6", "non-ascii-header", "padded-header"],
)
async def test_webhook_no_request_can_carry_fails_its_attempt_at_once(
    notifying: System, settings: Settings, webhook: events.WebhookTarget
) -> None:
    """A JobRequested written by another producer with a webhook the API would refuse: one
    attempt, failed with WEBHOOK_INVALID. (It raised inside the notifier, which left the job's end
    unacknowledged and handed it out again after every ack wait, for ever, recording nothing; a
    padded header value failed every attempt as WEBHOOK_UNREACHABLE until the window ended.)"""
    request = events.JobRequested(
        job_id=events.new_event_id(),
        job_type="emit",
        parameters={"lines": 1, "interval": "0", "exit_code": 0, "stderr_every": 0},
        webhook=webhook,
    )
    nc = await eventstore.connect(settings, "test")
    try:
        await eventstore.publish(nc.jetstream(), Names(settings.prefix), request)
    finally:
        await eventstore.close(nc)
    async with notifying.client() as client, asyncio.timeout(30):
        # The projector writes the job in another task: polled.
        while (await client.get(f"/api/jobs/{request.job_id}")).status_code == 404:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    log = await webhook_log(notifying, request.job_id, settled)
    assert [(a["outcome"], a["error"]["code"]) for a in log["items"]] == [
        ("failed", "WEBHOOK_INVALID")
    ]


async def test_job_type_webhook_is_signed_with_the_types_own_secret(
    settings: Settings, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A type's default webhook follows the request's own, signed with its secret_env."""
    types = tmp_path / "jobtypes.toml"
    types.write_text(
        Path(TEST_TYPES).read_text()
        + f'\n[[job_types.emit.webhooks]]\nurl = "{receiver.url}?type=1"\n'
        'secret_env = "TEST_TYPE_HOOK_SECRET"\nheaders = { "X-Team" = "ops" }\n'
    )
    monkeypatch.setenv("TEST_TYPE_HOOK_SECRET", "type-secret")
    system = System(msgspec.structs.replace(settings, job_types_file=str(types)))
    await system.start()
    try:
        await system.start_notifier()
        job_id = await start_job(system, {"url": receiver.url})
        own, typed = await receiver.wait_for(2)
        assert own.headers["x-jobrunner-signature"] == signature.sign(SECRET, own.body)
        assert typed.headers["x-jobrunner-signature"] == signature.sign("type-secret", typed.body)
        assert typed.headers["x-team"] == "ops"
        assert typed.headers["x-jobrunner-delivery"] == signature.delivery_id(job_id, 1)
        log = await webhook_log(system, job_id, lambda log: settled(log, 2))
        # The query (it may carry a secret) is never shown.
        assert [d["url"] for d in log["deliveries"]] == [receiver.url, receiver.url]
    finally:
        await system.stop()


async def test_webhook_log_is_hidden_from_a_token_that_cannot_see_the_job(
    notifying: System, receiver: Receiver
) -> None:
    """An own-jobs token asking for another's job's webhooks gets 404, as for the job itself."""
    job_id = await start_job(notifying, {"url": receiver.url})
    await receiver.wait_for(1)
    other = await notifying.create_token("other", "operator", own_jobs_only=True)
    async with notifying.client(token=other) as client:
        response = await client.get(f"/api/jobs/{job_id}/webhooks")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_replay_rebuilds_the_webhook_log_identically(
    notifying: System, receiver: Receiver, settings: Settings
) -> None:
    """After retried and delivered webhooks, a replay from the stream rebuilds the same log."""
    receiver.answer = lambda n: 503 if n == 1 else 200
    job_id = await start_job(notifying, {"url": receiver.url})
    await webhook_log(notifying, job_id, settled)
    report = await replay(settings)
    assert report.differences == {}
    assert report.tables["webhook_deliveries"] == 2


@pytest.mark.parametrize(
    ("trusted", "delivered"),
    [pytest.param(True, True, id="ca-trusted"), pytest.param(False, False, id="ca-unknown")],
)
async def test_https_receiver_is_verified_for_its_host_name(
    system: System, tmp_path: Path, trusted: bool, delivered: bool
) -> None:
    """https://localhost: the notifier connects to the checked address and verifies the
    certificate for the URL's name; a certificate from an authority it does not trust fails."""
    files = make_certificates(tmp_path)
    ca = files.ca if trusted else files.other_ca
    await system.start_notifier(webhook_allow_hosts="localhost", webhook_tls_ca_file=str(ca))
    async with running_receiver((files.server_cert, files.server_key), "localhost") as receiver:
        job_id = await start_job(system, {"url": receiver.url})
        until = settled if delivered else (lambda log: len(log["items"]) >= 1)
        log = await webhook_log(system, job_id, until)
    first = log["items"][0]
    if delivered:
        assert first["outcome"] == "delivered"
        assert receiver.received[0].headers["host"] == f"localhost:{receiver.port}"
    else:
        assert first["error"]["code"] == "WEBHOOK_UNREACHABLE"
        assert "CERTIFICATE_VERIFY_FAILED" in first["error"]["message"]
        assert receiver.received == []


async def test_each_job_of_a_batch_notifies_its_own_webhook(
    notifying: System, receiver: Receiver
) -> None:
    """A batch whose jobs name webhooks: each job's end arrives with that job's delivery id."""
    jobs = [
        {"job_type": "emit", "parameters": {"lines": 1}, "webhook": {"url": receiver.url}}
        for _ in range(3)
    ]
    async with notifying.client() as client:
        response = await client.post("/api/jobs/batch", json={"batch_name": "hooked", "jobs": jobs})
    assert response.status_code == 201, response.text
    created = response.json()
    got = await receiver.wait_for(3)
    bodies = [json.loads(r.body) for r in got]
    assert sorted(b["job_id"] for b in bodies) == sorted(created["job_ids"])
    assert {b["batch_id"] for b in bodies} == {created["batch_id"]}
    assert {r.headers["x-jobrunner-delivery"] for r in got} == {
        signature.delivery_id(job_id, 0) for job_id in created["job_ids"]
    }


async def test_batch_with_a_bad_webhook_is_refused_naming_the_job(
    notifying: System, receiver: Receiver
) -> None:
    """One job of a batch with a bad webhook: 422 INVALID_BATCH naming its index and field."""
    jobs = [
        {"job_type": "emit", "webhook": {"url": receiver.url}},
        {"job_type": "emit", "webhook": {"url": "gopher://example.com/"}},
    ]
    async with notifying.client() as client:
        response = await client.post("/api/jobs/batch", json={"batch_name": "bad", "jobs": jobs})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_BATCH"
    assert [(e["index"], e["field"], e["code"]) for e in error["errors"]] == [
        (1, "webhook.url", "UNSUPPORTED_SCHEME")
    ]


async def test_restarted_job_notifies_the_webhook_it_was_requested_with(
    notifying: System, receiver: Receiver
) -> None:
    """POST /api/jobs/{id}/restart: the new attempt's end goes to the first attempt's webhook,
    under the new job's id and delivery id."""
    first = await start_job(notifying, {"url": receiver.url}, exit_code=2)
    await receiver.wait_for(1)
    async with notifying.client() as client:
        restarted = await client.post(f"/api/jobs/{first}/restart")
    assert restarted.status_code == 201, restarted.text
    second = restarted.json()["id"]
    got = await receiver.wait_for(2)
    body = json.loads(got[1].body)
    assert body["job_id"] == second
    assert body["attempt"] == 2
    assert got[1].headers["x-jobrunner-delivery"] == signature.delivery_id(second, 0)
