"""The notifier's pure parts: signature, delivery ids, payload, where a delivery goes on."""

from __future__ import annotations

import json

from jobrunner.common.jobtypes import JobType, TypeWebhook
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus, WebhookOutcome, WebhookTarget
from jobrunner.services.notifier import payload, signature
from jobrunner.services.notifier.delivery import Resume, RetryPolicy, resume_after
from jobrunner.services.notifier.targets import targets_of


def request(**fields: object) -> events.JobRequested:
    return events.JobRequested(job_id="j1", job_type="emit", **fields)  # type: ignore[arg-type]


def attempt(index: int, number: int, outcome: WebhookOutcome) -> events.WebhookAttempted:
    return events.WebhookAttempted(
        job_id="j1",
        delivery_id=signature.delivery_id("j1", index),
        webhook_index=index,
        url="https://example.com/",
        attempt=number,
        outcome=outcome,
    )


def test_signature_verifies_only_the_signed_body() -> None:
    """The receiver's check passes for the body signed, fails for any other or another key."""
    header = signature.sign("k", b'{"a":1}')
    assert header.startswith("sha256=")
    assert signature.verify("k", b'{"a":1}', header)
    assert not signature.verify("k", b'{"a":2}', header)
    assert not signature.verify("other", b'{"a":1}', header)


def test_delivery_id_is_stable_per_job_and_webhook() -> None:
    """Same job and webhook: same id (any notifier, any restart); another webhook: another."""
    assert signature.delivery_id("j1", 0) == signature.delivery_id("j1", 0)
    assert signature.delivery_id("j1", 0) != signature.delivery_id("j1", 1)
    assert signature.delivery_id("j1", 0) != signature.delivery_id("j2", 0)


def test_payload_has_the_seeds_fields() -> None:
    """job_id, job_type, status, progress, results/result and error, as seed 004 shows."""
    end = events.StatusChanged(
        job_id="j1",
        status=JobStatus.FAILED,
        error=ErrorInfo(code="DOWNLOAD_FAILED", message="no"),
        result={"n": 1},
    )
    progress = events.ProgressReported(job_id="j1", current=2, total=4, percent=50.0, phase="x")
    body = json.loads(payload.build(request(), end, progress, "d1"))
    assert body["job_id"] == "j1"
    assert body["job_type"] == "emit"
    assert body["status"] == "failed"
    assert body["progress"] == {
        "step": "x",
        "percent": 50.0,
        "current": 2,
        "total": 4,
        "message": None,
    }
    assert body["results"] == body["result"] == {"n": 1}
    assert body["error"] == {"code": "DOWNLOAD_FAILED", "message": "no", "details": None}
    assert payload.event_name(end) == "job.failed"


def test_resume_goes_on_after_the_last_attempt() -> None:
    """After a retrying attempt: the same webhook, next attempt; after a final one: the next."""
    assert resume_after(None) == Resume()
    assert resume_after(attempt(0, 3, WebhookOutcome.RETRYING)).attempt == 4
    assert resume_after(attempt(0, 3, WebhookOutcome.RETRYING)).index == 0
    assert resume_after(attempt(0, 3, WebhookOutcome.DELIVERED)) == Resume(1)
    assert resume_after(attempt(1, 2, WebhookOutcome.FAILED)) == Resume(2)


def test_backoff_doubles_up_to_the_longest_wait() -> None:
    """Waits double from the first, never beyond the longest (plus at most a quarter jitter)."""
    policy = RetryPolicy(window_seconds=60, first_wait=1.0, longest_wait=8.0)
    assert 1.0 <= policy.wait_after(1) <= 1.25
    assert 4.0 <= policy.wait_after(3) <= 5.0
    assert 8.0 <= policy.wait_after(20) <= 10.0


def test_targets_put_the_requests_webhook_first_and_drop_reserved_headers() -> None:
    """Index 0 is the request's webhook, then the type's; reserved headers never pass."""
    job_type = JobType(
        name="emit",
        argv=["x"],
        webhooks=[TypeWebhook(url="https://t.example/", secret_env="HOOK_SECRET")],
    )
    own = WebhookTarget(url="https://o.example/", headers={"X-JOBRUNNER-SIGNATURE": "f", "A": "b"})
    found = targets_of(request(webhook=own), job_type, "main", {"HOOK_SECRET": "typed"})
    assert [(t.index, t.url, t.secret) for t in found] == [
        (0, "https://o.example/", "main"),
        (1, "https://t.example/", "typed"),
    ]
    assert found[0].headers == {"A": "b"}
    assert "typed" not in repr(found[1])


def test_type_secret_missing_from_the_environment_is_named() -> None:
    """A type whose secret_env is not set: the delivery says which variable is missing."""
    job_type = JobType(
        name="emit", argv=["x"], webhooks=[TypeWebhook(url="https://t/", secret_env="NOPE")]
    )
    [target] = targets_of(request(), job_type, "main", {})
    assert target.secret is None
    assert target.secret_missing == "NOPE"
