"""The runner's lock board reads what it can of the lock bucket and skips the rest: a key or value
jobrunner does not write (by hand, another version) never stops it, nor changes what the
well-formed entries say about a slot and its queue."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from jobrunner.common.slots import QueueEntry, SlotValue, queue_key, slot_key
from jobrunner.services.runner.board import LockBoard

LOCKS = ("a", "b")
JOBS = tuple(f"j{n}" for n in range(6))
OPERATIONS = (None, "DEL", "PURGE")  # a put, then what nats-py names a delete and a purge
# Keys the well-formed operations use: the foreign ones below never touch them.
OWN_PREFIXES = ("slot.a", "slot.b", "queue.a.", "queue.b.", "job.j")

Op = tuple[str, bytes | None, str | None]


@st.composite
def well_formed(draw: st.DrawFn) -> Op:
    """A put or delete of a lease or a queue place, as jobrunner writes them."""
    lock, job = draw(st.sampled_from(LOCKS)), draw(st.sampled_from(JOBS))
    operation = draw(st.sampled_from(OPERATIONS))
    if draw(st.booleans()):
        key = queue_key(lock, job)
        value = msgspec.json.encode(QueueEntry(job_id=job, job_type="t"))
    else:
        key = slot_key(draw(st.sampled_from((lock, None))), job)
        phase = draw(st.sampled_from(("reserved", "held")))
        value = msgspec.json.encode(SlotValue(job_id=job, phase=phase, pgid=7))
    return key, value if operation is None else b"", operation


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
foreign_values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    json_values.map(msgspec.json.encode),
    # The right fields of the wrong types, another job's entry, and huge values.
    st.just(b'{"job_id": 7, "phase": "held"}'),
    st.just(b'{"job_id": "j1", "phase": "gone"}'),
    st.just(msgspec.json.encode(QueueEntry(job_id="someone-else"))),
    st.just(msgspec.json.encode(SlotValue(job_id="x", phase="held"))),
    st.just(b"[" * 100_000),
    st.just(b'{"job_id": "' + b"x" * 1_000_000 + b'", "phase": "held"}'),
)
foreign_keys = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        ("queue.", "queue.res", "queue..x", "queue.res.", "slot.", "job.", "run.", "fence.", "")
    ),
    st.builds(
        lambda kind, parts: kind + ".".join(parts),
        st.sampled_from(("queue.", "slot.", "job.", "run.", "other.")),
        st.lists(st.text("ab.x_-", max_size=6), max_size=4),
    ),
).filter(lambda key: not key.startswith(OWN_PREFIXES))


@st.composite
def foreign(draw: st.DrawFn) -> Op:
    """Anything under a key the well-formed operations do not use."""
    return draw(foreign_keys), draw(foreign_values), draw(st.sampled_from(OPERATIONS))


def feed(board: LockBoard, ops: list[Op]) -> None:
    for revision, (key, value, operation) in enumerate(ops, start=1):
        board._apply(key, value, operation, revision)


@settings(deadline=None)
@given(st.lists(st.tuples(well_formed(), st.booleans(), foreign()), max_size=40))
def test_foreign_entries_never_stop_the_board_nor_change_what_the_others_say(
    steps: list[tuple[Op, bool, Op]],
) -> None:
    """Whatever else the bucket holds, the board never fails on it, and the slots and queues of
    the entries jobrunner wrote read as they would without it."""
    mixed = LockBoard()
    own = LockBoard()
    revision = 0
    for own_op, with_foreign, foreign_op in steps:
        revision += 1
        mixed._apply(*own_op, revision)
        own._apply(*own_op, revision)
        if with_foreign:
            revision += 1
            mixed._apply(*foreign_op, revision)
    for lock in LOCKS:
        lock_key = slot_key(lock, "")
        assert mixed.head(lock_key) == own.head(lock_key)
        assert mixed.slots.get(lock_key) == own.slots.get(lock_key)
        for job in JOBS:
            assert mixed.queued(lock_key, job) == own.queued(lock_key, job)
    for job in JOBS:
        assert mixed.slots.get(slot_key(None, job)) == own.slots.get(slot_key(None, job))


def test_a_queue_key_without_a_job_is_skipped() -> None:
    """A delete of ``queue.res`` (no job part: hand-made) is skipped; the queue of ``res`` and
    the other keys read as before. It used to fail the watch with an IndexError."""
    board = LockBoard()
    feed(
        board,
        [
            (queue_key("res", "j1"), msgspec.json.encode(QueueEntry(job_id="j1")), None),
            ("queue.res", b"", "DEL"),
            ("queue.", b"", "PURGE"),
            ("queue.res", msgspec.json.encode(QueueEntry(job_id="j2")), None),
        ],
    )
    head = board.head("slot.res")
    assert head is not None
    assert head.job_id == "j1"
    assert not board.queued("slot.res", "j2")


def test_a_queue_entry_naming_another_job_than_its_key_is_skipped() -> None:
    """An entry under ``queue.res.j1`` naming job j9 would never leave the queue (its key's
    delete removes j1): it is skipped, and the job it replaced leaves the queue."""
    board = LockBoard()
    key = queue_key("res", "j1")
    feed(
        board,
        [
            (key, msgspec.json.encode(QueueEntry(job_id="j1")), None),
            (key, msgspec.json.encode(QueueEntry(job_id="j9")), None),
        ],
    )
    assert board.head("slot.res") is None


def test_an_unreadable_entry_is_logged_once_however_often_it_comes() -> None:
    """A watch replays the bucket on every restart: the same unreadable entry is said once."""
    board = LockBoard()
    with capture_logs() as logs:
        for revision in range(1, 4):
            board._apply("slot.res", b"not json", None, revision)
            board._apply("queue.res", b"", "DEL", revision)
    said = [entry["key"] for entry in logs if entry["log_level"] == "warning"]
    assert said == ["slot.res", "queue.res"]
