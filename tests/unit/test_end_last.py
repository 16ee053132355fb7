"""A job's stream hands its end on last, after events stored after it (a lost runner's lines)."""

from __future__ import annotations

from datetime import UTC, datetime

from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import EndLast, Item

AT = datetime(2026, 1, 1, tzinfo=UTC)


def line(seq: int) -> Item:
    event = events.LineLogged(job_id="j", lines=[events.LogLine(seq, "stdout", "INFO", AT, "x")])
    return Item(seq, event, sse.frames_for(event, seq, None))


def end(seq: int, status: JobStatus = JobStatus.FAILED) -> Item:
    event = events.StatusChanged(job_id="j", status=status)
    return Item(seq, event, sse.frames_for(event, seq, None))


def test_the_usual_end_goes_out_at_once() -> None:
    order = EndLast()
    first = line(1)
    assert order.order(first, pending=1) == [first]
    last = end(2)
    assert order.order(last, pending=0) == [last]
    assert order.ended


def test_an_end_with_events_stored_after_it_goes_out_after_them_and_a_second_end_never() -> None:
    order = EndLast()
    first_end, late, own_end = end(5), line(6), end(7)
    assert order.order(first_end, pending=2) == []
    assert not order.ended
    assert order.order(late, pending=1) == [late]
    assert order.order(own_end, pending=0) == [first_end]
    assert order.ended


def test_an_end_held_is_let_out_by_an_event_that_shows_nothing() -> None:
    order = EndLast()
    held = end(3)
    assert order.order(held, pending=1) == []
    assert order.order(None, pending=0) == [held]


def test_events_before_the_end_pass_unchanged() -> None:
    order = EndLast()
    items = [line(n) for n in range(1, 4)]
    assert [order.order(i, pending=9)[0] for i in items] == items
    assert not order.ended
