"""PROTOTYPE (s26replay, measurement only): a replay's loading over two processes.

A helper process (``python -m jobrunner.services.projector.linesplit``) reads the stream once,
from the first sequence to an end sequence, and parses every frame of the NATS protocol. The
line events (most of a stream) it decodes, projects and ``COPY``s into the rebuilt
``log_lines`` on its own connection; to the replay process it sends, in stream order, every
other event as stored and, for each line event, only its job and its number of lines
(``LinesCounted``), so the replay folds the counts into the jobs' rows as before (no second
pass over the jobs). A line event the helper cannot read it sends as stored: the replay decodes
it and sets it aside as ever.

Frames on the helper's stdout: ``<kind u8><seq u64><len u32><payload>``; kind 0: the stored
event; kind 1: ``<count u32><job id utf-8>``; kind 2: end (every line committed).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import sys
from typing import Any

import msgspec

from jobrunner.common.settings import Settings
from jobrunner.contracts import codec
from jobrunner.contracts.events import LineLogged, names_its_time
from jobrunner.contracts.names import Names
from jobrunner.services.projector.feed import FETCH_EVENTS, NO_TIME, EventFeed
from jobrunner.services.projector.projections import (
    Change,
    LinesAppended,
    LinesCounted,
    Unreadable,
    project,
)

HEAD = struct.Struct("<BQI")
COUNT = struct.Struct("<I")
RAW, COUNTED, END = 0, 1, 2
LINE_PREFIX = b'{"type":"LineLogged"'
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031


async def _helper(job: dict[str, Any]) -> None:
    import asyncpg

    from jobrunner.common import eventstore
    from jobrunner.common.natsconnection import NatsConnection
    from jobrunner.common.streamreader import StreamReader
    from jobrunner.services.projector.store import LINE_COLUMNS

    settings = Settings(
        nats_url=job["nats_url"], prefix=job["prefix"], database_url=job["database_url"]
    )
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "replay-lines")
    js = nc.jetstream()
    connection = NatsConnection.from_settings(settings)
    reader = StreamReader(
        js,
        connection.servers,
        names.stream,
        names.all_subjects,
        "jobrunner-replay-lines",
        connection=connection,
    )
    conn = await asyncpg.connect(settings.database_url)
    await conn.execute("SET synchronous_commit = off")
    out = sys.stdout.buffer
    with __import__("contextlib").suppress(OSError):
        fcntl.fcntl(out.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    end = job["end"]
    # The share of line events loaded here (tenths, by sequence); the rest the replay loads.
    tenths = job["tenths"]
    rows_queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(8)

    async def copier() -> None:
        while (rows := await rows_queue.get()) is not None:
            await conn.copy_records_to_table(
                "log_lines", schema_name=job["schema"], columns=LINE_COLUMNS, records=rows
            )

    copying = asyncio.create_task(copier())
    await reader.open(job["first"])
    pack = HEAD.pack
    rows: list[tuple[Any, ...]] = []
    done = False
    async for messages in reader.batches():
        frames: list[bytes] = []
        for seq, data in messages:
            if seq > end:
                done = True
                break
            if data.startswith(LINE_PREFIX) and seq % 10 < tenths:
                try:
                    event = codec.decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    event = None
                if type(event) is LineLogged and names_its_time(event):
                    (change,) = project(event, seq)
                    assert isinstance(change, LinesAppended)
                    rows += change.rows
                    job_id = change.job_id.encode()
                    frames.append(pack(COUNTED, seq, 4 + len(job_id)))
                    frames.append(COUNT.pack(len(change.rows)) + job_id)
                    if seq == end:
                        done = True
                        break
                    continue
            frames.append(pack(RAW, seq, len(data)))
            frames.append(data)
            if seq == end:
                done = True
                break
        if rows and (len(rows) >= 20_000 or done):
            if copying.done():
                copying.result()
            await rows_queue.put(rows)
            rows = []
        out.write(b"".join(frames))
        out.flush()
        if done:
            break
    if rows:
        await rows_queue.put(rows)
    await rows_queue.put(None)
    await copying
    await reader.close()
    await conn.close()
    await eventstore.close(nc)
    out.write(HEAD.pack(END, 0, 0))
    out.flush()


class SplitFeed:
    """``EventFeed``'s interface for ``replay._load``, fed by the helper up to ``end``; from
    ``end + 1`` on by an ``EventFeed`` of its own (the catch-up)."""

    def __init__(self, js: Any, names: Names, settings: Settings, end: int) -> None:
        self._js, self._names, self._settings, self._end = js, names, settings, end
        self._queue: asyncio.Queue[list[tuple[int, list[Change]]] | None] = asyncio.Queue(8)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._after: EventFeed | None = None
        self._ended = False
        self.lines_done = asyncio.Event()

    async def start(self, first: int) -> None:
        job = {
            "nats_url": self._settings.nats_url,
            "prefix": self._settings.prefix,
            "database_url": self._settings.database_url,
            "schema": "readmodel_replay",
            "first": first,
            "end": self._end,
            "tenths": int(os.environ.get("JOBRUNNER_REPLAY_SPLIT_TENTHS", "10")),
        }
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobrunner.services.projector.linesplit",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=4 * PIPE_BYTES,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job).encode() + b"\n")  # credentials not in argv
        await self._proc.stdin.drain()
        self._proc.stdin.close()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        stdout = self._proc.stdout
        buf = b""
        unpack = HEAD.unpack_from
        size = HEAD.size
        decode = codec.decode
        while True:
            chunk = await stdout.read(PIPE_BYTES)
            if not chunk:
                raise RuntimeError("the line loader ended without its end frame")
            buf = buf + chunk if buf else chunk
            batch: list[tuple[int, list[Change]]] = []
            at = 0
            n = len(buf)
            while at + size <= n:
                kind, seq, length = unpack(buf, at)
                if at + size + length > n:
                    break
                body = buf[at + size : at + size + length]
                at += size + length
                if kind == COUNTED:
                    batch.append(
                        (seq, [LinesCounted(body[4:].decode(), COUNT.unpack_from(body)[0])])
                    )
                elif kind == RAW:
                    try:
                        event = decode(body)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        batch.append((seq, [Unreadable(f"{type(exc).__name__}: {exc}")]))
                        continue
                    if event and not names_its_time(event):
                        batch.append((seq, [Unreadable(NO_TIME)]))
                        continue
                    batch.append((seq, project(event, seq) if event else []))
                else:
                    buf = b""
                    if batch:
                        await self._queue.put(batch)
                    rc = await self._proc.wait()
                    if rc:
                        raise RuntimeError(f"the line loader failed ({rc})")
                    self.lines_done.set()
                    await self._queue.put(None)
                    return
            buf = buf[at:]
            if batch:
                await self._queue.put(batch)

    async def fetch(self, timeout: float = 0.5) -> list[tuple[int, list[Change]]]:
        if self._ended:
            assert self._after is not None
            return await self._after.fetch(timeout)
        assert self._task is not None
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            {getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter not in done:
            getter.cancel()
            if self._task in done:
                self._task.result()
            return []
        batch = getter.result()
        if batch is None:
            self._ended = True
            self._after = EventFeed(self._js, self._names, self._settings, name="replay")
            await self._after.start(self._end + 1)
            return await self._after.fetch(timeout)
        while len(batch) < FETCH_EVENTS and not self._queue.empty():
            more = self._queue.get_nowait()
            if more is None:
                self._queue.put_nowait(None)
                break
            batch += more
        return batch

    async def wait_lines(self) -> None:
        """Until the helper has committed every line up to the end sequence."""
        assert self._task is not None
        waiting = asyncio.ensure_future(self.lines_done.wait())
        await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.lines_done.is_set():
            waiting.cancel()
            self._task.result()
            raise RuntimeError("the line loader stopped")

    async def lookup(self, seq: int) -> Any:
        from jobrunner.services.projector.setaside import StoredMessage

        msg = await self._js.get_msg(self._names.stream, seq, direct=True)
        return StoredMessage(msg.subject, msg.data or b"")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with __import__("contextlib").suppress(BaseException):
                await self._task
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._after is not None:
            await self._after.close()


if __name__ == "__main__":
    asyncio.run(_helper(json.loads(sys.stdin.readline())))
