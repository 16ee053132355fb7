"""No event can stop the projector: what a column cannot hold is made storable, what still fails
is set aside (recorded, named by /health), and every later job stays visible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus, WebhookOutcome
from jobrunner.contracts.names import Names
from jobrunner.services.projector import setaside, store
from jobrunner.services.projector.projections import JobUpdated, project
from jobrunner.services.projector.replay import replay
from jobrunner.services.projector.storable import INT4_MAX
from tests.history_support import job_events, publish, publisher, reading_system, wait_projected
from tests.readmodel_support import replay_differences
from tests.system import System

BIG = 99_999_999_999_999_999_999  # what the default pattern reads from "[99999999999999999999/5]"


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[System]:
    """A projector and the API, no runner."""
    async with reading_system(settings) as system:
        yield system


async def row(settings: Settings, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(settings.database_url)
    await database.init_connection(conn)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def publish_then_a_healthy_job(settings: Settings, poison: list[events.Event]) -> None:
    """Publish ``poison``, then a job that must become visible after it."""
    last = await publish(settings, [*poison, *job_events("after", status=JobStatus.COMPLETED)])
    await wait_projected(settings, last, timeout=20)
    assert (await row(settings, "SELECT status FROM readmodel.jobs WHERE id = 'after'"))[0] == (
        "completed"
    )


async def test_a_progress_event_out_of_contract_is_set_aside(
    live: System, settings: Settings
) -> None:
    """A progress event beyond its contract (a count past any column, a NUL in its phase) is set
    aside and named; its job and every later job still show."""
    poison = [
        *job_events("big", status=JobStatus.RUNNING),
        events.ProgressReported(job_id="big", current=BIG, total=5, percent=1e300),
        events.ProgressReported(job_id="big", phase="load\x00ing", message="a\x00b"),
    ]
    await publish_then_a_healthy_job(settings, poison)
    found = await row(
        settings, "SELECT status, progress_current FROM readmodel.jobs WHERE id = 'big'"
    )
    assert tuple(found) == ("running", None)
    failures = await row(
        settings,
        "SELECT count(*), min(event_type), min(job_id) FROM readmodel.projector_failures",
    )
    assert tuple(failures) == (2, "ProgressReported", "big")


def test_progress_values_a_column_cannot_hold_are_made_storable() -> None:
    """Should a progress event beyond the columns decode (an older contract), its counts are
    clamped, its percentage kept within 0-100 and NUL shown as ␀ rather than failing a batch."""
    event = events.ProgressReported(
        job_id="big", current=BIG, total=BIG, percent=1e300, phase="load\x00ing", message="a\x00b"
    )
    (change,) = project(event, 7)
    assert isinstance(change, JobUpdated)
    assert change.fields["progress_current"] == change.fields["progress_total"] == INT4_MAX
    assert change.fields["progress_percent"] == 100.0
    assert (change.fields["phase"], change.fields["message"]) == ("load\u2400ing", "a\u2400b")


async def test_nul_in_a_result_value_or_key_is_stored_as_a_sign(
    live: System, settings: Settings
) -> None:
    """A NUL inside a ##jobrunner:result value or key shows as ␀, and later jobs still appear."""
    poison = job_events("res", status=JobStatus.COMPLETED, result={"k\x00": ["v\x00", {"x": 1}]})
    await publish_then_a_healthy_job(settings, poison)
    found = await row(settings, "SELECT result FROM readmodel.jobs WHERE id = 'res'")
    assert found[0] == {"k\u2400": ["v\u2400", {"x": 1}]}


def progress_cancel_and_webhook(job_id: str, mark: str) -> list[events.Event]:
    """A running job's progress report, cancel request and webhook attempt, ``mark`` in every
    text field the projector cleans of NUL."""
    return [
        *job_events(job_id, status=JobStatus.RUNNING),
        events.ProgressReported(job_id=job_id, current=3, total=7, percent=42.5, phase="fetch"),
        events.CancelRequested(job_id=job_id, requested_by=f"al{mark}ice"),
        events.WebhookAttempted(
            job_id=job_id,
            delivery_id=f"d{mark}1",
            url=f"https://hooks.example/{mark}",
            outcome=WebhookOutcome.FAILED,
            error=ErrorInfo(code=f"E{mark}X", message=f"refused{mark}"),
        ),
    ]


async def test_nul_in_a_cancel_request_or_webhook_attempt_is_stored_as_a_sign(
    live: System, settings: Settings
) -> None:
    """A NUL in who asked to cancel, or in a webhook attempt's delivery id, URL or error, shows
    as ␀ (nothing is set aside), the same job without NUL keeps its text as sent, and a replay
    rebuilds the same rows."""
    poison = [
        *progress_cancel_and_webhook("nul", "\x00"),
        *progress_cancel_and_webhook("clean", "-"),
    ]
    await publish_then_a_healthy_job(settings, poison)
    for job_id, sign in (("nul", "\u2400"), ("clean", "-")):
        job = await row(
            settings,
            "SELECT cancelled_by, progress_current, progress_total, progress_percent, phase"
            " FROM readmodel.jobs WHERE id = $1",
            job_id,
        )
        assert tuple(job) == (f"al{sign}ice", 3, 7, 42.5, "fetch")
        delivery = await row(
            settings,
            "SELECT delivery_id, url, error_code, error_message"
            " FROM readmodel.webhook_deliveries WHERE job_id = $1",
            job_id,
        )
        assert tuple(delivery) == (
            f"d{sign}1",
            f"https://hooks.example/{sign}",
            f"E{sign}X",
            f"refused{sign}",
        )
    failures = await row(settings, "SELECT count(*) FROM readmodel.projector_failures")
    assert failures[0] == 0
    assert await replay_differences(settings) == {}


async def test_an_exit_code_beyond_the_column_is_not_shown(
    live: System, settings: Settings
) -> None:
    """An exit code no integer column holds is shown as none; the job still ends."""
    poison = [
        *job_events("exit", status=JobStatus.RUNNING),
        events.StatusChanged(job_id="exit", status=JobStatus.FAILED, exit_code=-BIG),
    ]
    await publish_then_a_healthy_job(settings, poison)
    found = await row(settings, "SELECT status, exit_code FROM readmodel.jobs WHERE id = 'exit'")
    assert tuple(found) == ("failed", None)


def unstorable_line(job_id: str) -> events.LineLogged:
    """A line whose number no integer key holds: no cleaning can store it."""
    at = job_events(job_id)[0].occurred_at
    return events.LineLogged(
        job_id=job_id, lines=[events.LogLine(2**40, "stdout", "INFO", at, "x")]
    )


async def test_an_event_that_cannot_be_stored_is_set_aside_and_the_projector_goes_on(
    live: System, settings: Settings
) -> None:
    """An event Postgres refuses is recorded as set aside, with its error; later jobs appear."""
    await publish_then_a_healthy_job(
        settings, [*job_events("bad", status=JobStatus.RUNNING), unstorable_line("bad")]
    )
    failure = await row(settings, "SELECT * FROM readmodel.projector_failures")
    assert failure["stream_seq"] == 3
    assert failure["subject"] == f"{settings.prefix}.job.bad.lines"
    assert (failure["event_type"], failure["job_id"]) == ("LineLogged", "bad")
    assert "out of int32 range" in failure["error"] or "integer" in failure["error"]
    assert '"LineLogged"' in failure["raw"]
    status = await row(settings, "SELECT status FROM readmodel.jobs WHERE id = 'bad'")
    assert status[0] == "running"  # the events before and after it were applied


async def test_an_unreadable_message_is_set_aside(live: System, settings: Settings) -> None:
    """A stored message that is no event (a field of the wrong type) is recorded, not skipped."""
    names = Names(settings.prefix)
    async with publisher(settings) as js:
        await js.publish(
            names.job_kind_subject("odd", "progress"),
            b'{"type":"ProgressReported","job_id":"odd","current":"many"}',
        )
    await publish_then_a_healthy_job(settings, [])
    failure = await row(settings, "SELECT * FROM readmodel.projector_failures")
    assert (failure["stream_seq"], failure["event_type"], failure["job_id"]) == (
        1,
        "ProgressReported",
        "odd",
    )
    assert failure["error"].startswith("ValidationError")


async def test_health_says_degraded_and_names_the_event_set_aside(
    live: System, settings: Settings
) -> None:
    """GET /health answers 200 "degraded", counting the events set aside and naming the last."""
    await publish_then_a_healthy_job(
        settings, [*job_events("bad", status=JobStatus.RUNNING), unstorable_line("bad")]
    )
    async with live.client(token=None) as client:
        response = await client.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["set_aside"]["count"] == 1
    assert body["set_aside"]["last"]["stream_seq"] == 3
    assert "EVENTS_SET_ASIDE" in [p["code"] for p in body["problems"]]


async def test_a_lost_database_connection_sets_nothing_aside(settings: Settings) -> None:
    """An outage is no bad event: applying on a lost connection raises, and nothing is recorded."""
    batch = [(seq, project(e, seq)) for seq, e in enumerate(job_events("j"), start=1)]
    conn = await asyncpg.connect(settings.database_url)
    await database.init_connection(conn)
    await store.create_schema(conn)
    await conn.close()

    async def lookup(seq: int) -> setaside.StoredMessage | None:
        return None

    with pytest.raises(asyncpg.InterfaceError):
        await setaside.apply(conn, batch, lookup)
    found = await row(settings, "SELECT count(*) FROM readmodel.projector_failures")
    assert found[0] == 0


async def test_replay_sets_aside_the_same_events_and_agrees(
    live: System, settings: Settings
) -> None:
    """jobrunner replay records the same events as set aside, and its tables match the live ones."""
    await publish_then_a_healthy_job(
        settings, [*job_events("bad", status=JobStatus.RUNNING), unstorable_line("bad")]
    )
    report = await replay(settings)
    assert report.differences == {}
    assert report.tables["projector_failures"] == 1


async def test_admins_list_the_events_set_aside_and_viewers_may_not(
    system: System, settings: Settings
) -> None:
    """GET /api/projector/failures lists what was set aside, for admins; a viewer gets 403."""
    last = await publish(
        settings, [*job_events("bad", status=JobStatus.RUNNING), unstorable_line("bad")]
    )
    await wait_projected(settings, last)
    viewer = await system.create_token("viewer", "viewer")
    async with system.client() as admin, system.client(token=viewer) as other:
        listed = await admin.get("/api/projector/failures")
        refused = await other.get("/api/projector/failures")
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == 1
    assert [(e["stream_seq"], e["job_id"]) for e in body["events"]] == [(last, "bad")]
    assert refused.status_code == 403


async def test_a_message_nested_too_deeply_is_set_aside(live: System, settings: Settings) -> None:
    """A JSON object nested thousands deep (not written by jobrunner) is set aside like any
    unreadable message, and later jobs still show."""
    names = Names(settings.prefix)
    async with publisher(settings) as js:
        await js.publish(
            names.job_kind_subject("deep", "lines"), b'{"job_id":"deep","a":' + b"[" * 50_000
        )
    await publish_then_a_healthy_job(settings, [])
    failure = await row(settings, "SELECT * FROM readmodel.projector_failures")
    assert (failure["stream_seq"], failure["job_id"]) == (1, None)
    assert failure["error"].startswith("DecodeError")
