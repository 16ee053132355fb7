"""How many lines a ``LogThrottle`` may let through while a test watched: the first, and one
more for each whole interval the watch lasted. A loaded machine stretches a test past the
interval (10 s) now and then, and the throttle then rightly logs again: a count of exactly one
would be a timed assertion."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Watch:
    def __init__(self) -> None:
        self.began = time.monotonic()
        self.ended: float | None = None

    def lines_allowed(self, interval: float) -> int:
        assert self.ended is not None, "count the lines once the watch is over"
        return 1 + int((self.ended - self.began) // interval)


@contextmanager
def watched() -> Iterator[Watch]:
    """The time a block took, for ``Watch.lines_allowed`` after it."""
    watch = Watch()
    try:
        yield watch
    finally:
        watch.ended = time.monotonic()
