"""Which jobs an action on a batch touches, and what it publishes (services/api/actions.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.contracts import events
from jobrunner.services.api.actions import (
    Attempt,
    attempt_job_id,
    next_attempt,
    plan_fail,
    plan_restart,
    unknown_jobs,
)

STATUSES = ("pending", "running", "completed", "failed", "cancelled")


def job(index: int, status: str, *, attempt: int = 1, lock: str | None = None) -> Attempt:
    root = f"root{index}"
    return Attempt(
        id=root if attempt == 1 else attempt_job_id(root, attempt),
        job_type="scraper",
        status=status,
        parameters={"plz": str(index)},
        lock=lock,
        requested_by="owner",
        batch_id="b1",
        batch_index=index,
        attempt=attempt,
        attempt_of=None if attempt == 1 else root,
    )


def kinds(plan_events: list[events.Publishable]) -> list[tuple[str, str]]:
    return [
        (type(e).__name__, getattr(e, "job_id", None) or getattr(e, "batch_id", ""))
        for e in plan_events
    ]


def test_restart_replaces_every_job_that_is_not_pending() -> None:
    """Restart gives every running or ended job a new attempt; a pending one is left to run."""
    latest = [job(i, s) for i, s in enumerate(STATUSES)]
    plan = plan_restart("b1", latest, "op", unfinished_only=False)
    assert plan.touched == ["root1", "root2", "root3", "root4"]
    assert [a.attempt_of for a in plan.attempts] == plan.touched
    assert all(a.attempt == 2 for a in plan.attempts)


def test_restart_cancels_a_running_job_before_its_new_attempt() -> None:
    """A running job gets CancelRequested (after BatchRestarted); its new attempt comes after."""
    plan = plan_restart("b1", [job(0, "running")], "op", unfinished_only=False, reason="why")
    assert kinds(plan.first) == [("BatchRestarted", "b1"), ("CancelRequested", "root0")]
    cancel = plan.first[1]
    assert isinstance(cancel, events.CancelRequested)
    assert (cancel.requested_by, cancel.reason) == ("op", "why")
    assert plan.attempts[0].attempt_of == "root0"


def test_pending_action_replaces_only_failed_and_cancelled_jobs() -> None:
    """`pending` leaves completed, running and pending jobs alone and cancels nothing."""
    latest = [job(i, s) for i, s in enumerate(STATUSES)]
    plan = plan_restart("b1", latest, "op", unfinished_only=True)
    assert plan.touched == ["root3", "root4"]
    assert kinds(plan.first) == [("BatchRestarted", "b1")]
    restarted = plan.first[0]
    assert isinstance(restarted, events.BatchRestarted)
    assert (restarted.mode, restarted.job_ids) == ("unfinished", ["root3", "root4"])


def test_restart_mode_all_is_recorded() -> None:
    """The BatchRestarted of a restart says mode "all" and names the replaced attempts."""
    plan = plan_restart("b1", [job(0, "completed")], "op", unfinished_only=False)
    restarted = plan.first[0]
    assert isinstance(restarted, events.BatchRestarted)
    assert (restarted.mode, restarted.job_ids, restarted.requested_by) == ("all", ["root0"], "op")


def test_new_attempt_keeps_the_work_and_names_the_actor() -> None:
    """A new attempt has the same type, parameters, lock and batch place, by the actor."""
    latest = job(3, "failed", attempt=2, lock="sheet")
    attempt = next_attempt(latest, "op")
    assert (attempt.job_type, attempt.parameters, attempt.lock) == (
        "scraper",
        {"plz": "3"},
        "sheet",
    )
    assert (attempt.batch_id, attempt.batch_index) == ("b1", 3)
    assert (attempt.attempt, attempt.attempt_of) == (3, "root3")
    assert attempt.job_id == attempt_job_id("root3", 3)
    assert attempt.event_id == f"{attempt.job_id}-requested"


def test_the_same_restart_twice_publishes_the_same_attempt_ids() -> None:
    """Sent again on the same picture, a restart names the same new jobs (stored once)."""
    latest = [job(i, "failed") for i in range(5)]
    first = plan_restart("b1", latest, "op", unfinished_only=False)
    second = plan_restart("b1", latest, "someone else", unfinished_only=False)
    assert [a.event_id for a in first.attempts] == [a.event_id for a in second.attempts]


def test_attempts_come_in_batch_order() -> None:
    """New attempts (and so their lock queue places) follow the batch index."""
    latest = [job(i, "failed") for i in (4, 0, 3, 1, 2)]
    plan = plan_restart("b1", latest, "op", unfinished_only=False)
    assert [a.batch_index for a in plan.attempts] == [0, 1, 2, 3, 4]


def test_selected_jobs_limit_a_restart() -> None:
    """With job_ids only the named jobs run again."""
    latest = [job(i, "completed") for i in range(4)]
    plan = plan_restart(
        "b1", latest, "op", unfinished_only=False, selected=frozenset({"root1", "root3"})
    )
    assert plan.touched == ["root1", "root3"]


def test_fail_cancels_pending_jobs_before_running_ones() -> None:
    """Fail: BatchFailed, then each pending job's cancel and end, then running jobs' cancels."""
    latest = [job(0, "running"), job(1, "pending"), job(2, "completed"), job(3, "pending")]
    plan = plan_fail("b1", latest, "op", "stop", already_failed=False)
    assert kinds(plan.first) == [
        ("BatchFailed", "b1"),
        ("CancelRequested", "root1"),
        ("StatusChanged", "root1"),
        ("CancelRequested", "root3"),
        ("StatusChanged", "root3"),
        ("CancelRequested", "root0"),
    ]
    assert plan.touched == ["root1", "root3", "root0"]
    assert [j.id for j in plan.cancelled_pending] == ["root1", "root3"]


def test_fail_ends_a_pending_job_under_its_terminal_event_id() -> None:
    """A pending job's end is `cancelled` with the job's one terminal id (as DELETE does)."""
    plan = plan_fail("b1", [job(0, "pending")], "op", "stop", already_failed=False)
    ending = plan.first[2]
    assert isinstance(ending, events.StatusChanged)
    assert ending.event_id == events.terminal_event_id("root0")
    assert (ending.status, ending.cancelled_by) == ("cancelled", "op")


def test_fail_sent_again_does_not_fail_the_batch_twice() -> None:
    """A second fail only cancels what is left; the batch keeps its first reason."""
    plan = plan_fail("b1", [job(0, "running")], "op", "again", already_failed=True)
    assert kinds(plan.first) == [("CancelRequested", "root0")]


def test_fail_records_the_reason() -> None:
    """BatchFailed and each cancel carry the reason and the actor."""
    plan = plan_fail("b1", [job(0, "running")], "op", "out of budget", already_failed=False)
    failed, cancel = plan.first
    assert isinstance(failed, events.BatchFailed)
    assert isinstance(cancel, events.CancelRequested)
    assert (failed.reason, failed.requested_by, cancel.reason) == (
        "out of budget",
        "op",
        "out of budget",
    )


def test_unknown_jobs_are_named_once_in_the_order_given() -> None:
    """The ids that are not jobs of the batch, each once, as the caller sent them."""
    assert unknown_jobs(["x", "a", "y", "x"], ["a", "b"]) == ["x", "y"]


attempts = st.lists(
    st.builds(
        job,
        index=st.integers(0, 50),
        status=st.sampled_from(STATUSES),
        attempt=st.integers(1, 5),
        lock=st.sampled_from([None, "sheet"]),
    ),
    unique_by=lambda a: a.batch_index,
    max_size=30,
)


@settings(deadline=None, max_examples=200)
@given(attempts, st.booleans())
def test_no_restart_touches_a_pending_job_and_every_attempt_is_next(
    latest: list[Attempt], unfinished_only: bool
) -> None:
    """For any batch: a restart never replaces a pending job, and each new attempt is the next."""
    by_id = {a.id: a for a in latest}
    plan = plan_restart("b1", latest, "op", unfinished_only=unfinished_only)
    for replaced, attempt in zip(plan.touched, plan.attempts, strict=True):
        old = by_id[replaced]
        assert old.status != "pending"
        assert (attempt.attempt, attempt.attempt_of) == (old.attempt + 1, old.root)
        if unfinished_only:
            assert old.status in ("failed", "cancelled")
    assert len({a.job_id for a in plan.attempts}) == len(plan.attempts)


@settings(deadline=None, max_examples=200)
@given(attempts)
def test_fail_touches_exactly_the_jobs_still_to_end(latest: list[Attempt]) -> None:
    """For any batch: fail cancels every pending and running job and nothing that ended."""
    plan = plan_fail("b1", latest, "op", "stop", already_failed=False)
    assert set(plan.touched) == {a.id for a in latest if a.status in ("pending", "running")}
    ends = [e for e in plan.first if isinstance(e, events.StatusChanged)]
    assert {e.job_id for e in ends} == {a.id for a in latest if a.status == "pending"}


def test_an_attempt_keeps_its_owner_and_names_who_restarted_it() -> None:
    """A job an admin runs again stays the submitter's: the user still sees its new attempt."""
    attempt = next_attempt(job(1, "failed"), "admin")
    assert (attempt.requested_by, attempt.restarted_by) == ("owner", "admin")
