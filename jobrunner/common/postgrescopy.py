"""A ``COPY`` into Postgres that ends when its connection does.

asyncpg (0.32) writes a COPY's rows until the socket stops taking them (some megabytes that
Postgres has not read yet: a big batch of lines while the backend waits on a lock, or is slow
or frozen), then waits for the socket to drain. A connection lost meanwhile never wakes that
wait: asyncpg's ``connection_lost`` does not resume writing. A backend terminated under a big
COPY (``pg_terminate_backend``, a restart), or a connection ended by its owner (a replay's
liveness watch, ``Connection.terminate``), left the batch, and the replay or projector, waiting
for ever. Each connection's termination listeners are called however it ends, so one cancels
the COPY then."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg


async def copy_records(
    conn: asyncpg.Connection,
    table: str,
    *,
    schema_name: str,
    columns: Sequence[str],
    records: Iterable[Sequence[Any]],
) -> None:
    """``conn.copy_records_to_table``; its connection ended while it runs raises
    ``asyncpg.ConnectionDoesNotExistError``, as any statement's does, instead of waiting for a
    socket that never drains. A cancel of the caller cancels the COPY, as it would unwrapped."""
    copying = asyncio.ensure_future(
        conn.copy_records_to_table(table, schema_name=schema_name, columns=columns, records=records)
    )
    ended: list[bool] = []

    def connection_ended(_: object) -> None:
        ended.append(True)
        copying.cancel()

    conn.add_termination_listener(connection_ended)
    try:
        await copying
    except BaseException as exc:
        task = asyncio.current_task()
        if ended and not (task is not None and task.cancelling()):
            # The COPY's own error (a cancel, a write to the closed transport) says nothing:
            # its connection has gone.
            raise asyncpg.ConnectionDoesNotExistError(
                "connection was closed in the middle of a COPY"
            ) from exc
        raise
    finally:
        conn.remove_termination_listener(connection_ended)
