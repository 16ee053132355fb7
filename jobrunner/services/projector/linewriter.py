"""A replay's log lines, copied on a connection of their own while the next batch is folded.

Serially, the replay process waits for Postgres to take each batch's ``COPY`` of lines (most of
its rows) and Postgres waits while the next batch is folded and encoded: on two cores each sat
idle about half of the loading. Here the lines of a committed batch go to a second connection
(one ``COPY`` in flight, so at most one batch's lines are held), and the batch's transaction
only adds their counts to the jobs. A replay's tables are checked against the live ones before
they count and thrown away when it fails, so the lines need not commit with their batch.

Any failure of a ``COPY`` (a line stored twice in the stream, a value Postgres cannot take: what
the serial path sets aside or inserts one by one) ends the pipeline: ``LinePipelineFailed`` is
raised at the next ``submit`` or at ``flush``, and the replay loads again the serial way.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

LINE_COLUMNS = ("job_id", "seq", "stream", "level", "ts", "text", "stream_seq")


class LinePipelineFailed(Exception):
    """A ``COPY`` of lines failed; the load must be done again without the pipeline."""


class LineWriter:
    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self._conn = conn
        self._schema = schema
        self._copying: asyncio.Task[None] | None = None

    async def submit(self, rows: list[tuple[Any, ...]]) -> None:
        """Start copying ``rows`` (of a committed batch) once the previous ``COPY`` is done."""
        await self.flush()
        if rows:
            self._copying = asyncio.create_task(self._copy(rows))

    async def flush(self) -> None:
        """Wait for the ``COPY`` in flight; raises ``LinePipelineFailed`` if it failed."""
        copying, self._copying = self._copying, None
        if copying is not None:
            await copying

    async def close(self) -> None:
        if self._copying is not None:
            self._copying.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinePipelineFailed):
                await self._copying
            self._copying = None

    async def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            await self._conn.copy_records_to_table(
                "log_lines", schema_name=self._schema, columns=LINE_COLUMNS, records=rows
            )
        except (asyncpg.PostgresError, ValueError, OverflowError, TypeError) as exc:
            raise LinePipelineFailed(f"{type(exc).__name__}: {exc}") from exc
