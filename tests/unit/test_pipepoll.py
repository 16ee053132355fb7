"""A tool's pipe unpolled for a rest and polled again (``process._Pipe``, ``pipepoll``): what
the tool printed meanwhile is read at the rest's end, on asyncio's loop and on uvloop, and on
asyncio's loop a rest makes no new reader of the pipe (it was the runner's largest Python cost
per message beside the publish: bench/RESULTS.md, session 33)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import uvloop

from jobrunner.services.runner.process import _Pipe


async def rests_then_reads() -> tuple[list[bytes], list[object]]:
    """Three rests; the tool's write during each is read at its end, not before. Returns what
    was read after each rest, and the loop's reader of the pipe after each (asyncio's loop)."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    pipe = _Pipe(loop, read_end)
    selector = getattr(loop, "_selector", None)
    got: list[bytes] = []
    readers: list[object] = []
    try:
        for text in (b"a\n", b"b\n", b"c\n"):
            assert pipe.rest_unpolled()
            os.write(write_end, text)
            for _ in range(3):
                await asyncio.sleep(0)  # the loop turns: an unpolled pipe is not read
            assert not pipe.reader._buffer  # type: ignore[attr-defined]
            pipe.end_rest()
            got.append(bytes(pipe.reader._buffer))  # type: ignore[attr-defined]
            pipe.reader._buffer.clear()  # type: ignore[attr-defined]
            if selector is not None:
                readers.append(selector.get_key(read_end).data[0])
    finally:
        os.close(write_end)
        pipe.close()
    return got, readers


def test_a_resting_pipe_is_read_at_the_rests_end_with_the_same_reader() -> None:
    """asyncio's loop: each rest's line at its end, and one reader handle for every rest (no
    new one a rest); closing the pipe takes the reader off the loop."""
    got, readers = asyncio.run(rests_then_reads())
    assert got == [b"a\n", b"b\n", b"c\n"]
    assert len(readers) == 3
    assert readers[0] is readers[1] is readers[2]


def test_a_resting_pipe_is_read_at_the_rests_end_on_uvloop() -> None:
    """uvloop (no selector to reach): the loop's own add_reader and remove_reader."""
    got, readers = uvloop.run(rests_then_reads())
    assert got == [b"a\n", b"b\n", b"c\n"]
    assert readers == []


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_pipe_closed_while_it_rests_leaves_nothing_on_the_loop(
    run: Callable[..., None],
) -> None:
    """Closed during a rest: no watch of its number is left (the next pipe may reuse it)."""

    async def closed_in_a_rest() -> None:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        pipe = _Pipe(loop, read_end)
        assert pipe.rest_unpolled()
        pipe.close()
        os.close(write_end)
        assert not loop.remove_reader(read_end)  # nothing registered for the number

    run(closed_in_a_rest())
