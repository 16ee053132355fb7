"""Which stored messages the services ask JetStream for, by subject (its direct reads)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg


class LastBySubjectReads:
    """The subjects of every "last message by subject" read seen so far, in order."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.subjects: list[str] = []

    async def seen(self, msg: Msg) -> None:
        self.subjects.append(json.loads(msg.data).get("last_by_subj", ""))

    async def settle(self) -> None:
        """Every read made before this call is in ``subjects`` after it."""
        await self.nc.flush()


@asynccontextmanager
async def last_by_subject_reads(nats_url: str) -> AsyncIterator[LastBySubjectReads]:
    """Watch the reads made while inside (all of them are in ``subjects`` at the end)."""
    nc = await nats.connect(nats_url)
    try:
        reads = LastBySubjectReads(nc)
        sub = await nc.subscribe("$JS.API.STREAM.MSG.GET.>", cb=reads.seen)
        await nc.flush()
        yield reads
        await reads.settle()
        await sub.unsubscribe()
    finally:
        await nc.close()
