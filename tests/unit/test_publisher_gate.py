"""A job's lines wait for its ``running`` to be stored: the runner starts the tool while that
status is on its way, and the stream must still show ``running`` before the first line."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.publisher import LinePublisher

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Offline:
    """What a publisher reads of its connection; its publishes are recorded instead."""

    max_payload = 1024 * 1024

    def jetstream(self) -> None:
        return None


class Recording(LinePublisher):
    def __init__(self) -> None:
        super().__init__(cast(Any, Offline()), Names("t"), "job")
        self.sent: list[events.Event] = []

    async def _publish(self, event: events.Event) -> None:
        self.sent.append(event)


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_lines_wait_until_running_is_stored() -> None:
    """A tool that prints at once: its line is published only after ``running`` is stored."""
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    publisher = Recording()
    publisher.start(after=stored)
    publisher.add("stdout", "INFO", "first", AT)
    await turns()
    assert publisher.sent == []
    stored.set_result(None)
    await publisher.close()
    assert [line.text for e in publisher.sent for line in cast(Any, e).lines] == ["first"]


async def test_running_never_stored_publishes_no_line() -> None:
    """``running`` refused: none of the job's lines is published, and closing says why."""
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    publisher = Recording()
    publisher.start(after=stored)
    publisher.add("stdout", "INFO", "first", AT)
    stored.set_exception(RuntimeError("refused"))
    with pytest.raises(RuntimeError, match="refused"):
        await publisher.close()
    assert publisher.sent == []
