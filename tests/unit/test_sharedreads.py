"""SharedReads: callers asking for one key while its read runs share that read."""

from __future__ import annotations

import asyncio

import pytest

from jobrunner.services.api.sharedreads import SharedReads


class Source:
    """A read that waits until released, counting how often it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def read(self) -> int:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.runs


async def test_callers_during_a_read_share_it() -> None:
    """Ten callers of one key while its read runs get its one result."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    callers = [asyncio.ensure_future(reads.read("job", source.read)) for _ in range(10)]
    await asyncio.sleep(0)
    source.release.set()
    assert await asyncio.gather(*callers) == [1] * 10
    assert source.runs == 1
    assert len(reads) == 0


async def test_a_caller_after_the_read_landed_reads_anew() -> None:
    """A finished read is never handed out again: the next caller's read is its own."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    source.release.set()
    assert await reads.read("job", source.read) == 1
    assert await reads.read("job", source.read) == 2


async def test_other_keys_are_read_on_their_own() -> None:
    """Two jobs' rows are two reads."""
    reads: SharedReads[int] = SharedReads()
    first, second = Source(), Source()
    callers = [
        asyncio.ensure_future(reads.read("a", first.read)),
        asyncio.ensure_future(reads.read("b", second.read)),
    ]
    await asyncio.sleep(0)
    first.release.set()
    second.release.set()
    await asyncio.gather(*callers)
    assert (first.runs, second.runs) == (1, 1)


async def test_the_first_caller_leaving_does_not_cancel_the_read_for_the_others() -> None:
    """The request that started the read goes away; the others still get the row."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    first = asyncio.ensure_future(reads.read("job", source.read))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(reads.read("job", source.read)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    source.release.set()
    assert await asyncio.gather(*others) == [1, 1, 1]
    assert source.runs == 1


async def test_a_failed_read_fails_every_caller_and_the_next_reads_again() -> None:
    """Postgres failing the read: each caller sees the error; a later caller tries again."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    source.error = ConnectionError("gone")
    callers = [asyncio.ensure_future(reads.read("job", source.read)) for _ in range(3)]
    await asyncio.sleep(0)
    source.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    source.error = None
    assert await reads.read("job", source.read) == 2
