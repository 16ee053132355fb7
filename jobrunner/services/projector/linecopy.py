"""A replay's lines, copied into ``log_lines`` by a process of their own.

The replay process is the bound of a replay (one Python process on one core, while Postgres and
nats-server share the other). LineLogged events are 60 % of a usual stream and most of its bytes:
decoding them, making their rows and encoding the ``COPY`` of 1.2 M lines is about a third of that
process's work. In the bulk load the replay's feed hands them over undecoded (``LinesDiverted``)
and, once it has applied them (never past the live checkpoint), sends them here as stored:

    frame = <stream seq: u64 LE> <length: u32 LE> <the message's payload>

on the worker's stdin. The worker decodes and projects them with the projector's own code, copies
the rows (the table has no key during the load), says so on its stdout at the end of its input
(the replay builds the lines' key meanwhile) and adds each job's line count and last sequence to
``jobs``, as the live projector does per batch. Anything but a readable
LineLogged whose rows Postgres takes (an event the live projector set aside, or an outage) makes
it exit with ``FAILED``: the replay then loads again the serial way, which sets such events aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import struct
import sys
from typing import Any

import asyncpg

from jobrunner.contracts import codec, events
from jobrunner.services.projector.projections import (
    Change,
    LinesAppended,
    LinesDiverted,
    project,
)
from jobrunner.services.projector.store import LINE_COLUMNS

FRAME = struct.Struct("<QI")
DATABASE_URL_ENV = "JOBRUNNER_LINECOPY_DATABASE_URL"  # not in argv: ps shows that to anyone
COPY_ROWS = 20_000  # lines per COPY
QUEUED_COPIES = 4  # COPYs' worth of rows decoded ahead of Postgres
COPIED = b"copied\n"  # on the worker's stdout once every line is copied
FAILED = 3  # exit status: a line the worker cannot store as the live projector did


class LineCopier:
    """The replay's end of the worker: start, send each applied batch, copied, finish."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._broken = False  # the worker went away (it failed): nothing more to send

    @classmethod
    async def start(cls, database_url: str, schema: str) -> LineCopier:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            schema,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, DATABASE_URL_ENV: database_url},
        )
        assert process.stdin is not None
        pipe = process.stdin.get_extra_info("pipe")
        with contextlib.suppress(OSError, AttributeError):  # Linux's, up to its pipe-max-size
            # A batch's lines in a few writes, not sixteen of the default 64 KiB and as many
            # wake-ups of either process: 1.2 CPU-s per million events less in the two.
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        return cls(process)

    async def send(self, batch: list[tuple[int, list[Change]]]) -> None:
        """The diverted lines of ``batch``, an applied one."""
        frames: list[bytes] = []
        pack = FRAME.pack
        for seq, changes in batch:
            if changes and type(change := changes[0]) is LinesDiverted:
                frames.append(pack(seq, len(change.data)))
                frames.append(change.data)
        if not frames or self._broken:
            return
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(b"".join(frames))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._broken = True  # finish() reports its exit status

    async def copied(self) -> bool:
        """Ends the worker's input and waits until it has copied every line (it then adds the
        counts to ``jobs``: ``finish``); False if it failed."""
        stdin = self._process.stdin
        assert stdin is not None
        assert self._process.stdout is not None
        if not self._broken:
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()
        return await self._process.stdout.readline() == COPIED

    async def finish(self) -> bool:
        """Waits for the worker to add the counts and exit; False if it failed."""
        return await self._process.wait() == 0

    async def stop(self) -> None:
        """Ends the worker if it is still running (the replay failed or was cancelled)."""
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


async def _copy(schema: str, database_url: str) -> None:
    """The worker: frames from stdin to ``schema.log_lines``, then the jobs' counts."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", buffering=0)
    )
    conn = await asyncpg.connect(database_url, server_settings={"synchronous_commit": "off"})
    counts: dict[str, tuple[int, int]] = {}  # job -> lines, the last one's stream sequence
    copies: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(QUEUED_COPIES)

    async def read() -> None:
        rows: list[tuple[Any, ...]] = []
        buffer = b""
        while chunk := await stdin.read(1 << 20):
            buffer = buffer + chunk if buffer else chunk
            pos, end = 0, len(buffer)
            while pos + FRAME.size <= end:
                seq, size = FRAME.unpack_from(buffer, pos)
                if pos + FRAME.size + size > end:
                    break
                start = pos + FRAME.size
                pos = start + size
                event = codec.decode(buffer[start:pos])
                if type(event) is not events.LineLogged:
                    raise ValueError(f"stream sequence {seq} is no LineLogged")
                for change in project(event, seq):
                    assert isinstance(change, LinesAppended)
                    rows += change.rows
                    n, _ = counts.get(change.job_id, (0, 0))
                    counts[change.job_id] = (n + len(change.rows), seq)
            buffer = buffer[pos:]
            if len(rows) >= COPY_ROWS:
                await copies.put(rows)
                rows = []
        if buffer:
            raise ValueError("the replay's input ended inside a frame")
        await copies.put(rows)
        await copies.put(None)

    async def copy() -> None:
        while (rows := await copies.get()) is not None:
            if rows:
                await conn.copy_records_to_table(
                    "log_lines", schema_name=schema, columns=LINE_COLUMNS, records=rows
                )

    await asyncio.gather(read(), copy())
    # The lines are all in: the replay builds their key while the counts go in.
    sys.stdout.buffer.write(COPIED)
    sys.stdout.buffer.flush()
    # The jobs are all stored by now: the replay closes the input once its load is applied.
    await conn.execute(
        f"UPDATE {schema}.jobs AS j SET log_count = j.log_count + c.n, "
        "last_seq = GREATEST(j.last_seq, c.seq) "
        "FROM unnest($1::text[], $2::int[], $3::bigint[]) AS c(id, n, seq) WHERE j.id = c.id",
        list(counts),
        [n for n, _ in counts.values()],
        [seq for _, seq in counts.values()],
    )
    await conn.close()


def main() -> int:
    gc.disable()  # nothing the worker makes is in a cycle; see replay.collector_paused
    try:
        asyncio.run(_copy(sys.argv[1], os.environ[DATABASE_URL_ENV]))
    except Exception as exc:  # any failure: the replay loads again without the worker
        print(f"jobrunner replay's line copy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
