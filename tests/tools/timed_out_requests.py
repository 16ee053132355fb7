"""The NATS requests of this process that got no answer in time, recorded as they happen: each
is still sent to the real server as is, only its timeout is noted."""

from __future__ import annotations

import nats.aio.client
import pytest


class TimedOut(list[tuple[str, float]]):
    """Every request of this process that got no answer: its subject and its timeout."""


def record_timed_out_requests(monkeypatch: pytest.MonkeyPatch) -> TimedOut:
    """From now on (until ``monkeypatch`` is undone), each request that times out is added to
    the list returned."""
    seen = TimedOut()
    request = nats.aio.client.Client.request

    async def recorded(
        self: nats.aio.client.Client, subject: str, *args: object, **kwargs: object
    ) -> object:
        try:
            return await request(self, subject, *args, **kwargs)  # type: ignore[arg-type]
        except TimeoutError:
            seen.append((subject, float(kwargs.get("timeout", 0.5))))  # type: ignore[arg-type]
            raise

    monkeypatch.setattr(nats.aio.client.Client, "request", recorded)
    return seen
