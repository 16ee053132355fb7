"""What a stream reader (common/streamreader.py) hands out before it raises."""

from __future__ import annotations

from typing import TypeVar

from jobrunner.common.streamreader import StreamReader

E = TypeVar("E", bound=Exception)


async def sequences_until_raised(reader: StreamReader, error: type[E]) -> tuple[list[int], E]:
    """The stream sequences ``reader.batches`` hands out, and the ``error`` it raises after
    them; an error of another kind is the caller's, and an end without one fails the test."""
    seqs: list[int] = []
    try:
        async for batch in reader.batches():
            seqs += [seq for seq, _ in batch]
    except error as exc:
        return seqs, exc
    raise AssertionError("the reader stopped without an error")
