"""Postgres connection set-up shared by the projector (writer) and the API (reader)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import msgspec
import structlog

log = structlog.get_logger()

# The schema that holds the live read models.
READ_SCHEMA = "readmodel"


# jsonb's binary form is a version byte and the JSON text. The binary format (not text) lets the
# projector COPY rows with jsonb columns in.
_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=msgspec.json.encode,
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="binary",
    )


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool's reset that sends nothing: for a pool whose sessions never change their state
    (reads only, no ``SET`` outside a transaction, no ``LISTEN``, no advisory lock). asyncpg's
    default reset is a query of its own on every release, a round trip per request; a
    transaction left open is still rolled back (asyncpg does that before calling this)."""


class PostgresUnreachable(ConnectionError):
    """A new connection to Postgres failed at the socket: refused, reset, no socket file, or
    asyncpg's connect timeout. Its own class so that a reader can answer "Postgres is away"
    for exactly this, not for any ``OSError`` or ``TimeoutError`` of the process."""


async def connect_or_unreachable(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect`` whose socket errors are :class:`PostgresUnreachable` (a pool's
    ``connect``)."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:  # TimeoutError is one too
        raise PostgresUnreachable(f"cannot connect to Postgres: {exc!r}") from exc


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    init: Callable[[asyncpg.Connection], Awaitable[None]] = init_connection,
    connect: Callable[..., Awaitable[asyncpg.Connection]] | None = None,
    connect_timeout: float | None = None,
    connection_class: type[asyncpg.Connection] | None = None,
    session_settings: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """``session_settings`` are Postgres settings for the pool's sessions
    (``{"synchronous_commit": "off"}``); a mapping rather than keywords, so that none can be
    taken for one of the parameters (as a ``reset`` or a ``connection_class`` was);
    ``reset`` replaces asyncpg's reset of a released connection (``keep_session``); ``init``
    sets up each new connection (``init_connection`` or one that calls it); ``connect`` opens
    one (``asyncpg.connect`` when None, or ``connect_or_unreachable``), within
    ``connect_timeout`` seconds (None: asyncpg's 60), of ``connection_class`` (None: asyncpg's
    own; ``timedconnection.TimedConnection``)."""
    bound: dict[str, Any] = {} if connect_timeout is None else {"timeout": connect_timeout}
    if connection_class is not None:
        bound["connection_class"] = connection_class
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=reset,
        connect=connect,
        server_settings=dict(session_settings or {}),
        **bound,
    )


# How long a stopping service waits for its pool's graceful close: each connection sends its
# Terminate and waits until Postgres closes the socket (milliseconds), and a loaded machine's
# seconds. A frozen Postgres never closes it, and asyncpg's close has no bound of its own (no
# command timeout on our pools): past this the connections are dropped, and logged.
POOL_CLOSE_SECONDS = 5.0


async def close_pool(pool: asyncpg.Pool, within: float | None = None) -> None:
    """Close ``pool`` gracefully within ``within`` seconds (``POOL_CLOSE_SECONDS``), else drop
    its connections (asyncpg's ``close`` terminates the pool when it is cancelled)."""
    within = POOL_CLOSE_SECONDS if within is None else within
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.error(
            "pool not closed in time (a connection not given back, or postgres not answering):"
            " its connections dropped",
            waited=round(within, 3),
        )


async def close_connection(conn: asyncpg.Connection, within: float | None = None) -> None:
    """Close one connection gracefully within ``within`` seconds (``POOL_CLOSE_SECONDS``),
    else drop it: its close waits, as a pool's does, for Postgres to close the socket after
    its Terminate (asyncpg aborts the connection when the close is cancelled)."""
    within = POOL_CLOSE_SECONDS if within is None else within
    try:
        await asyncio.wait_for(conn.close(), within)
    except TimeoutError:
        log.error(
            "connection not closed in time (postgres not answering): dropped",
            waited=round(within, 3),
        )
