"""An SSE client that follows a job to its end as a browser does: on a dropped connection it
reconnects with ``Last-Event-ID``, and it keeps everything it received for the counting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from tests.sse_client import iter_events


@dataclass
class Viewer:
    """One SSE client that follows a job to its end, resuming from the last id it saw."""

    job_id: str
    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # every SSE id received, in order
    dones: int = 0
    connects: int = 0
    connects_tried: int = 0  # connections attempted, answered or not
    served_by: list[str] = field(default_factory=list)  # base URL of each stream answered 200
    last_id: str | None = None
    got_line: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, client: httpx.AsyncClient, *others: httpx.AsyncClient) -> None:
        """Follow the job to its ``done``; with ``others``, each connection goes to the next
        client in turn, as a load balancer in front of several API instances would send it."""
        clients = (client, *others)
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            client = clients[self.connects_tried % len(clients)]
            self.connects_tried += 1
            try:
                async with client.stream(
                    "GET", f"/jobs/stream/{self.job_id}", headers=headers
                ) as response:
                    self.connects += 1
                    if response.status_code != 200:
                        await asyncio.sleep(0.1)  # the API is still starting: try again
                        continue
                    self.served_by.append(str(client.base_url))
                    async for event in iter_events(response):
                        if event.id is not None:
                            self.last_id = event.id
                            self.ids.append(event.id)
                        if event.event == "message":
                            self.lines.append(int(event.json["seq"]))
                            self.got_line.set()
                        elif event.event == "done":
                            self.dones += 1
                            return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)  # the API is down: try again, as a browser would

    def problems(self, n: int, expected: int) -> list[str]:
        out = []
        if self.lines != list(range(1, expected + 1)):
            dupes = len(self.lines) - len(set(self.lines))
            out.append(
                f"client {n}: {len(self.lines)} lines for {expected} printed "
                f"({dupes} twice, in order: {self.lines == sorted(self.lines)})"
            )
        if len(set(self.ids)) != len(self.ids):
            out.append(f"client {n}: {len(self.ids) - len(set(self.ids))} events twice")
        if self.dones != 1:
            out.append(f"client {n}: {self.dones} done events")
        return out
