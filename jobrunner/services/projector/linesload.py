"""A replay's lines, loaded by a process of its own beside the replay (``jobrunner replay``).

``LineLogged`` events are most of a stream's events and most of its bytes, and their rows
depend on nothing else (keyed by job and line number). While the replay process folds every other
event, this helper reads only the lines' subjects (``<prefix>.job.*.lines``: JetStream sends it
nothing else, and the replay's own reader skips the lines' bodies), decodes and projects them with
the projector's own code and ``COPY``s them into the rebuilt schema on its own connection: the
loading runs on both cores. It loads the line events up to ``through`` (never past the live
checkpoint when it started: the replay's final checkpoint is at least that); the replay takes
every event after it itself.

What the jobs' rows count of their lines (``log_count``, ``last_seq``) it sums per job and hands
over on its stdout at the end; the replay adds them to the jobs once its own load is done.

Anything it cannot store as the live projector would (an unreadable event, a value Postgres
refuses: the live projector sets such an event aside) ends it with ``NOT_AS_LIVE``: the replay
then loads again in one process, which sets the event aside as the live projector did. It dies
with the replay (``PR_SET_PDEATHSIG``): no orphan goes on writing into Postgres.

Input (stdin): one JSON object, ``Job``. Output (stdout): ``Counts`` as JSON, once done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
import msgspec
import structlog

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.projector import store, timestamps
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.projections import LinesAppended

log = structlog.get_logger()

NOT_AS_LIVE = 3  # exit status: an event the live projector set aside (or would): load in one
RESTART_ATTEMPTS = 10  # as the replay's own feed
_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


class Job(msgspec.Struct, frozen=True):
    settings: Settings
    schema: str
    first_seq: int
    through: int  # the last stream sequence whose lines are loaded here
    parent: int  # the replay's pid: gone already, the helper stops at once


class Counts(msgspec.Struct, frozen=True):
    """Per job: its lines loaded and the last sequence of its line events (what ``store.fold``
    adds to a job's row for its lines), as three columns."""

    job_ids: list[str]
    lines: list[int]
    last_seqs: list[int]


class LinesLoadFailed(RuntimeError):
    """The helper failed (killed, crashed, lost Postgres or NATS for good): nothing swapped."""


class NotAsLive(Exception):
    """An event the helper cannot store as the live projector did."""


class LinesLoader:
    """The replay's handle on its helper process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        assert proc.stdout is not None
        # Read all along: the counts fill more than a pipe holds.
        self._output = asyncio.ensure_future(proc.stdout.read())

    @classmethod
    async def start(
        cls, settings: Settings, schema: str, first_seq: int, through: int
    ) -> LinesLoader:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(
            msgspec.json.encode(Job(settings, schema, first_seq, through, os.getpid()))
        )
        await proc.stdin.drain()
        proc.stdin.close()
        return cls(proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def alongside(self, loading: Awaitable[T]) -> T | None:
        """``loading`` (the replay's own part) while the helper loads the lines; None when the
        helper found an event it cannot store as the live projector did. A helper that fails
        fails the replay at once, not when the replay's part is done."""
        task = asyncio.ensure_future(loading)
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done() or self._proc.returncode == 0:
                return await task
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._verdict()  # raises unless NOT_AS_LIVE
            return None
        finally:
            exited.cancel()
            task.cancel()

    async def counts(self) -> Counts | None:
        """Once the helper is done: its counts; None when it found an event it cannot store as
        the live projector did; raises ``LinesLoadFailed`` when it failed."""
        await self._proc.wait()
        output = await self._output
        self._verdict()
        if self._proc.returncode == NOT_AS_LIVE:
            return None
        try:
            return msgspec.json.decode(output, type=Counts)
        except msgspec.DecodeError as exc:
            raise LinesLoadFailed(f"the replay's lines loader said no counts: {exc}") from None

    def _verdict(self) -> None:
        code = self._proc.returncode
        if code in (0, NOT_AS_LIVE):
            if code == NOT_AS_LIVE:
                log.warning("replay loads in one process: a line event is not storable")
            return
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        raise LinesLoadFailed(
            f"the replay's lines loader (pid {self._proc.pid}) failed ({how}); nothing was "
            "swapped. See its error above, then run `jobrunner replay` again."
        )

    async def stop(self) -> None:
        """Killed unless done (the replay failed or was cancelled): it writes nothing more."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        await self._proc.wait()
        self._output.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._output


async def add_counts(conn: asyncpg.Connection, schema: str, counts: Counts) -> None:
    """The helper's counts added to the jobs' rows, as ``store`` adds a batch's; jobs it names
    that the replay did not store (their ``JobRequested`` set aside) are left out, as there."""
    await conn.execute(
        f"UPDATE {schema}.jobs AS j SET log_count = j.log_count + c.lines, "
        "last_seq = GREATEST(j.last_seq, c.last_seq) "
        "FROM unnest($1::text[], $2::int[], $3::bigint[]) AS c(id, lines, last_seq) "
        "WHERE j.id = c.id",
        counts.job_ids,
        counts.lines,
        counts.last_seqs,
    )


async def load(job: Job) -> Counts:
    """The helper's work: the lines up to ``job.through`` into ``job.schema``."""
    settings = job.settings
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "replay-lines")
    conn = await asyncpg.connect(
        settings.database_url, server_settings={"synchronous_commit": "off"}
    )
    await timestamps.init_connection(conn)
    feed = EventFeed(
        nc.jetstream(),
        names,
        settings,
        name="replay-lines",
        restart_attempts=RESTART_ATTEMPTS,
        subjects=names.all_lines,
    )
    counts: dict[str, list[int]] = {}
    try:
        await feed.start(job.first_seq)
        done = job.through < job.first_seq
        while not done:
            batch = await feed.fetch(timeout=1.0)
            rows: list[tuple[object, ...]] = []
            for seq, changes in batch:
                if seq > job.through:
                    done = True
                    break
                for change in changes:
                    if type(change) is not LinesAppended:
                        raise NotAsLive(f"the event at {seq} is no storable line event: {change}")
                    rows += change.rows
                    seen = counts.get(change.job_id)
                    if seen is None:
                        counts[change.job_id] = [len(change.rows), seq]
                    else:
                        seen[0] += len(change.rows)
                        seen[1] = seq
            if rows:
                try:
                    await conn.copy_records_to_table(
                        "log_lines",
                        schema_name=job.schema,
                        columns=store.LINE_COLUMNS,
                        records=rows,
                    )
                except (asyncpg.DataError, ValueError, OverflowError) as exc:
                    raise NotAsLive(f"{type(exc).__name__}: {exc}") from exc
            # Every line event stored when the last one arrived is in: none up to ``through``
            # is still to come.
            if not done and feed.caught_up():
                done = True
    finally:
        await feed.close()
        await conn.close()
        await eventstore.close(nc)
    return Counts(
        list(counts),
        [n for n, _ in counts.values()],
        [last for _, last in counts.values()],
    )


def main() -> int:
    job = msgspec.json.decode(sys.stdin.buffer.read(), type=Job)
    # Killed with the replay, however it ends (SIGKILL too): never an orphan writing rows.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != job.parent:  # the replay died before the death signal was set
        return 1
    gc.disable()  # as the replay's load: the batches in flight hold no cycles
    try:
        counts = asyncio.run(load(job))
    except NotAsLive as exc:
        print(f"replay lines: {exc}", file=sys.stderr, flush=True)
        return NOT_AS_LIVE
    sys.stdout.buffer.write(msgspec.json.encode(counts))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
