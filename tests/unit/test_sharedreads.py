"""SharedReads: callers asking for one key while its read runs share that read."""

from __future__ import annotations

import asyncio
import gc

import pytest

from jobrunner.services.api.readpool import ReadModelsTimeout
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


async def test_a_failed_read_fails_only_its_starter_and_the_others_read_themselves() -> None:
    """Postgres failing the shared read (one lost connection): the caller that started it sees
    the error; each caller that joined it reads on its own, and gets the row."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    source.error = ConnectionError("gone")
    shared_read = source.read

    async def fails_once() -> int:
        try:
            return await shared_read()
        finally:
            source.error = None  # only the shared read meets the lost connection

    callers = [asyncio.ensure_future(reads.read("job", fails_once)) for _ in range(3)]
    await asyncio.sleep(0)
    source.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results[0], ConnectionError)
    assert sorted(results[1:]) == [2, 3]  # type: ignore[type-var]
    assert source.runs == 3
    assert len(reads) == 0


async def test_a_read_past_its_deadline_fails_every_caller_at_once() -> None:
    """Postgres not answering the shared read within the read deadline: the callers that
    joined it get the same ReadModelsTimeout, without a read of their own (which would wait
    the whole deadline again before the same answer)."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    source.error = ReadModelsTimeout(2.5)
    callers = [asyncio.ensure_future(reads.read("job", source.read)) for _ in range(3)]
    await asyncio.sleep(0)
    source.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ReadModelsTimeout) for r in results), results
    assert source.runs == 1
    assert len(reads) == 0


async def test_every_caller_leaving_then_the_read_failing_leaves_no_unretrieved_error() -> None:
    """The read's failure after all its callers left is seen (no "exception never retrieved"
    in the log) and its key is gone."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        reads: SharedReads[int] = SharedReads()
        source = Source()
        source.error = ConnectionError("gone")
        callers = [asyncio.ensure_future(reads.read("job", source.read)) for _ in range(3)]
        await asyncio.sleep(0)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        assert len(reads) == 1  # still in flight, nobody waiting
        del callers, caller  # their CancelledErrors' frames hold the read
        source.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(reads) == 0
        gc.collect()
        await asyncio.sleep(0)
        assert [c.get("message") for c in errors] == []
    finally:
        loop.set_exception_handler(None)


async def test_a_caller_arriving_once_the_read_finished_reads_anew() -> None:
    """A caller asking in the loop turn between the read finishing and its key's removal is
    not handed the finished read: it reads anew."""
    reads: SharedReads[int] = SharedReads()
    source = Source()
    source.release.set()
    first = asyncio.ensure_future(reads.read("job", source.read))
    await asyncio.sleep(0)  # ``first`` runs: the read's task is scheduled, not yet run
    flight_was_done: list[bool] = []

    async def late() -> int:
        # Runs right after the read task's one step (which finished the read).
        flight_was_done.append(reads._flights["job"].done())
        return await reads.read("job", source.read)

    second = asyncio.ensure_future(late())
    assert await asyncio.gather(first, second) == [1, 2]
    assert flight_was_done == [True]
    assert source.runs == 2
