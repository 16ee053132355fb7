"""Objects alive after a service's start-up are exempt from later garbage collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jobrunner.common import heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's own objects go back to the collector


def test_objects_alive_after_start_up_are_never_walked_again(unfrozen: None) -> None:
    """A busy service's full collections no longer walk what it built at start-up."""
    built_at_start = [[n] for n in range(1000)]
    heap.freeze_startup_objects()
    assert gc.get_freeze_count() >= len(built_at_start)
    assert not any(built_at_start is o for o in gc.get_objects(generation=2))


def test_garbage_left_by_start_up_is_collected_not_frozen(unfrozen: None) -> None:
    """What start-up dropped (a reference cycle) is freed, not kept for the service's life."""

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    dropped = weakref.ref(a)
    del a, b
    heap.freeze_startup_objects()
    assert dropped() is None
