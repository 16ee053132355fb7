"""Many token records written straight into a token store's bucket (a thousand publishes at a
time): a listing long enough to be caught midway by a fault."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from jobrunner.services.api.security.tokens import Role, TokenRecord, TokenStore


async def store_viewer_tokens(
    js: JetStreamContext, store: TokenStore, count: int, padding: int = 0
) -> None:
    """``count`` viewer tokens ``t0``, ``t1``, ... in ``store``'s bucket, each name ``padding``
    bytes longer (records that fill a client's queue sooner)."""
    now = datetime.now(UTC)
    for first in range(0, count, 1000):
        await asyncio.gather(
            *(
                js.publish(
                    f"$KV.{store.kv._name}.token.t{n}",
                    msgspec.json.encode(
                        TokenRecord(
                            id=f"t{n}",
                            name=f"n{n}" + "x" * padding,
                            role=Role.VIEWER,
                            hash="h",
                            created_at=now,
                        )
                    ),
                )
                for n in range(first, min(first + 1000, count))
            )
        )
