"""Postgres connection set-up shared by the projector (writer) and the API (reader)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

# The schema that holds the live read models.
READ_SCHEMA = "readmodel"


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog"
        )


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init_connection
    )
