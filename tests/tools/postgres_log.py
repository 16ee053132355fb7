"""What a test's own Postgres wrote to its log (``EmbeddedPostgres.log_file``): its errors, each
logged by the backend that met it before the client was told.

The log reaches the file through the server process's pipe and a thread of the test's that
copies it, so a line may still be on its way when the test looks. A marker is logged first, by a
statement of the test's own: its line is written after every line logged before it, and the file
is read once the marker is in it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from jobrunner.embedded.postgres import EmbeddedPostgres


async def lines_logged(server: EmbeddedPostgres, conn: asyncpg.Connection, text: str) -> int:
    """How many lines of ``server``'s log, up to now, hold ``text``."""
    marker = f"log marker {uuid.uuid4()}"
    # A WARNING reaches the log at the server's default log_min_messages.
    await conn.execute(f"DO $$ BEGIN RAISE WARNING '{marker}'; END $$")
    async with asyncio.timeout(30):  # a bound on a broken test only
        while True:
            log = server.log_file.read_text(errors="replace")
            if marker in log:
                break
            await asyncio.sleep(0.02)  # the copying thread: nothing to wait on
    return sum(text in line for line in log.splitlines())
