"""The real JetStream, counting the stream look-ups made through it (no mock: every call goes
to the server)."""

from __future__ import annotations

from nats.js import JetStreamContext


class CountingJetStream:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.lookups = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.js, name)

    async def get_last_msg(self, *args: object, **kwargs: object) -> object:
        self.lookups += 1
        return await self.js.get_last_msg(*args, **kwargs)  # type: ignore[arg-type]
