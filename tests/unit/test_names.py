"""Subject, stream, consumer and bucket names: one module, one prefix per installation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.contracts import events
from jobrunner.contracts.names import KIND_BY_EVENT, Names

PREFIXES = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")


def test_subjects_of_one_job() -> None:
    """Each event of a job lands on <prefix>.job.<id>.<kind>."""
    names = Names("acme")
    assert names.subject(events.LineLogged(job_id="j1", lines=[])) == "acme.job.j1.lines"
    assert names.subject(events.StatusChanged(job_id="j1", status="running")) == (
        "acme.job.j1.status"
    )
    assert names.job_subjects("j1") == "acme.job.j1.>"
    assert names.kind_subjects("status") == "acme.job.*.status"


def test_every_event_type_has_a_subject() -> None:
    """No event type is left without a subject of its own."""
    assert set(KIND_BY_EVENT) == set(events.EVENT_TYPES)
    names = Names("acme")
    samples = [
        names.subject(t(job_id="x") if issubclass(t, events.Event) else t(batch_id="x"))  # type: ignore[call-arg]
        for t in (events.JobArchived, events.CancelRequested, events.BatchArchived)
    ]
    assert samples == ["acme.job.x.archived", "acme.job.x.cancel", "acme.batch.x.archived"]
    job_kinds = [k for t, k in KIND_BY_EVENT.items() if issubclass(t, events.Event)]
    batch_kinds = [k for t, k in KIND_BY_EVENT.items() if issubclass(t, events.BatchEvent)]
    assert len(set(job_kinds)) == len(job_kinds)
    assert len(set(batch_kinds)) == len(batch_kinds)


@pytest.mark.parametrize("prefix", ["", "a.b", "a*", "a>", "a b", "x" * 33, "ä", "abc\n"])
def test_prefix_that_would_break_subjects_is_refused(prefix: str) -> None:
    """A prefix with dots, wildcards, spaces or over 32 characters is refused with a sentence."""
    with pytest.raises(ValueError, match="must be 1-32 of"):
        Names(prefix)


@settings(deadline=None)
@given(PREFIXES, PREFIXES)
def test_installations_with_different_prefixes_share_no_name(first: str, second: str) -> None:
    """Two installations on one NATS server never see each other's events, buckets or consumers."""
    a, b = Names(first), Names(second)
    if first == second:
        return
    assert not a.all_subjects.startswith(b.all_subjects[:-1])
    assert (a.runner_consumer, a.projector_consumer) != (b.runner_consumer, b.projector_consumer)
    assert (a.locks_bucket, a.tokens_bucket) != (b.locks_bucket, b.tokens_bucket)


@settings(deadline=None)
@given(PREFIXES)
def test_names_are_valid_for_nats(prefix: str) -> None:
    """Stream, consumer and bucket names hold only characters NATS accepts in them."""
    names = Names(prefix)
    for name in (names.stream, names.runner_consumer, names.locks_bucket, names.tokens_bucket):
        assert all(c.isalnum() or c in "_-" for c in name)
