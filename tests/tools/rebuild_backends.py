"""The backends of a replay or rebuild (`jobrunner replay`, a projector's) ended under it, for
real, while it loads: all terminated (``pg_terminate_backend``), or its write waiting on a table
the test holds locked cancelled (``pg_cancel_backend``, an operator cancelling its query)."""

from __future__ import annotations

import asyncio
import threading

import asyncpg


async def terminate_backends_since(database_url: str, since: object, spared: int = 0) -> list[int]:
    """Every client backend begun after ``since`` (but ``spared``) terminated with
    pg_terminate_backend, each waited for (10 s): their pids."""
    conn = await asyncpg.connect(database_url)
    try:
        return [
            row["pid"]
            for row in await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND backend_start > $1 AND pid <> $2",
                since,
                spared,
            )
        ]
    finally:
        await conn.close()


class BackendsTerminated:
    """Every backend of the replay or rebuild (begun after ``since``) terminated with
    pg_terminate_backend: idle as the loading starts (called), or (``table``, one of the rebuilt
    schema) while a write of the loading waits on that table, which the test holds locked: a
    statement in flight."""

    def __init__(self, database_url: str, since: object, table: str | None) -> None:
        self.database_url = database_url
        self.since = since
        self.table = table
        self.terminated: list[int] = []
        self._locked = threading.Event()
        self._terminating: threading.Thread | None = None

    async def __call__(self, *_: object) -> None:
        if self.table is None:
            await self._terminate()
            return
        # In a thread of its own, not on the command's event loop: the replay's loop goes on
        # into the write that waits, and the lock is let go whenever the command ends (a task
        # of the command's loop is cancelled at its end, before its rollback: the first version
        # of this test left the lock held, and the replay run again waited on it for ever).
        self._terminating = threading.Thread(
            target=asyncio.run, args=(self._while_a_write_waits(),)
        )
        self._terminating.start()
        await asyncio.to_thread(self._locked.wait, 60)

    def done(self) -> list[int]:
        """The backends terminated, once the fault has ended."""
        if self._terminating is not None:
            self._terminating.join()
        return self.terminated

    async def _while_a_write_waits(self) -> None:
        holder = await asyncpg.connect(self.database_url)
        try:
            async with holder.transaction():
                # Reads pass (a COPY's look at the table's columns), writes wait.
                await holder.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
                self._locked.set()
                async with asyncio.timeout(60):
                    while not await holder.fetchval(  # noqa: ASYNC110 - Postgres state
                        "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted "
                        "AND relation = $1::regclass)",
                        self.table,
                    ):
                        await asyncio.sleep(0.02)
                await self._terminate(spared=holder.get_server_pid())
        finally:
            self._locked.set()
            await holder.close()

    async def _terminate(self, spared: int = 0) -> None:
        self.terminated += await terminate_backends_since(self.database_url, self.since, spared)


class WaitingWriteCancelled(BackendsTerminated):
    """The loading's write that waits on a table of the rebuilt schema the test holds locked,
    cancelled with pg_cancel_backend: an operator cancelling the replay's query."""

    async def _terminate(self, spared: int = 0) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            self.terminated += [
                row["pid"]
                for row in await conn.fetch(
                    "SELECT pid, pg_cancel_backend(pid) FROM pg_locks "
                    "WHERE NOT granted AND relation = $1::regclass",
                    self.table,
                )
            ]
        finally:
            await conn.close()
