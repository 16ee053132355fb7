"""``job_update``: one compact event per change of any job, for dashboards and the side panel;
and ``batch_update``, a batch's row whenever its counters or status change (batch_updates.py).

Built from the JetStream events themselves (never from polling Postgres). A backlog is read through
one wildcard (fast), then a consumer that filters out log-line subjects follows the live stream,
so a flood of output costs this stream nothing. Each frame's ``id``
is the stream sequence of the event it came from; ``Last-Event-ID`` resumes right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from datetime import datetime

import asyncpg
import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from jobrunner.common.consumerlimit import ConsumerLimitRetry, at_consumer_limit
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.streamreader import StreamReader, StreamReaderError
from jobrunner.common.subscription import OrderedReader, ordered_reader
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.api import readmodels, schemas, sse
from jobrunner.services.api.batch_updates import BatchUpdates
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.readpool import ReadModelsOfAnotherVersion
from jobrunner.services.api.staletelling import StaleTeller, Woken
from jobrunner.services.api.streamlookups import UNREADABLE, StreamLookups, stream_lookups

log = structlog.get_logger()

EVENT_NAME = "job_update"
# The kinds that change what a job_update shows; "lines" is left out on purpose.
UPDATE_KINDS = ("requested", "status", "progress", "cancel")
# Jobs whose latest state one connection remembers (to fill fields an event does not carry).
REMEMBERED_JOBS = 10_000
# A catch-up read that gets nothing for this long is at the stream's end: it hands over to the
# live consumer.
CATCH_UP_IDLE_SECONDS = 1.0
# A backlog longer than this is read by the raw stream reader (a connection of its own).
RAW_CATCH_UP_MIN = 1000


class JobState(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag=EVENT_NAME,
    rename="camel",
):
    """A job as its ``job_update`` shows it, and that event's data as it is encoded: seed 001's
    fields (``jobId, status, phase, progress, message, updatedAt``) and a few more a panel needs
    (``jobType``, ``current``/``total`` for "42 / 127"), after ``"type": "job_update"``.

    A msgspec Struct rather than a dataclass: a catch-up from far back makes one state per
    update event, and ``msgspec.structs.replace`` and encoding the Struct itself cost a fraction
    of ``dataclasses.replace`` and of building a dict to encode (``bench/catchup.py``)."""

    job_id: str
    job_type: str | None = None
    status: str
    phase: str | None = None
    progress: float | None = None
    current: int | None = None
    total: int | None = None
    message: str | None = None
    cancel_requested: bool = False
    updated_at: datetime | None = None


_encoder = msgspec.json.Encoder()
_FRAME = b"id: %d\nevent: " + EVENT_NAME.encode() + b"\ndata: %s\n\n"


def update_frame(seq: int, state: JobState) -> bytes:
    """The ``job_update`` frame of ``state``, id ``seq``: the bytes ``sse.frame`` makes of the
    same data, built in one step (a catch-up from far back makes one per update event)."""
    return _FRAME % (seq, sse.escape_breaks(_encoder.encode(state)))


def percent_of(percent: float | None, current: int | None, total: int | None) -> float | None:
    """The reported percent, else ``current / total`` ("42 / 127" is 33.1 %)."""
    if percent is None and current is not None and total:
        return round(100.0 * current / total, 1)
    return percent


def state_from_row(row: asyncpg.Record) -> JobState:
    """A job's state as the read model shows it."""
    job = readmodels.job_from_row(row)
    progress = job.progress or schemas.Progress(None, None, None, None, None)
    percent = percent_of(progress.percent, progress.current, progress.total)
    # As apply() shows them: a completed job is at 100 %, a failed one says its error.
    if job.status == JobStatus.COMPLETED:
        percent = 100.0
    return JobState(
        job_id=job.id,
        status=job.status,
        job_type=job.job_type,
        phase=progress.phase,
        progress=percent,
        current=progress.current,
        total=progress.total,
        message=job.error.message if job.error is not None else progress.message,
        cancel_requested=job.cancel_requested_at is not None,
        updated_at=job.updated_at,
    )


def apply(state: JobState | None, event: events.Event) -> JobState | None:
    """The job's state after ``event`` (pure). ``None`` for events that change nothing shown.

    ``state`` is ``None`` only for a job neither this stream nor the read model knows yet: its
    JobRequested came before the stream's start and the projector has not applied it. Such a
    job's status is never guessed from a progress report or a cancel request: until a
    StatusChanged says otherwise, it is "pending", the status every job starts in."""
    at = event.occurred_at
    match event:
        case events.JobRequested():
            return JobState(
                job_id=event.job_id, status="pending", job_type=event.job_type, updated_at=at
            )
        case events.StatusChanged():
            base = state or JobState(job_id=event.job_id, status=event.status.value)
            message = base.message
            if event.error is not None:
                message = event.error.message
            progress = base.progress
            if event.status == JobStatus.COMPLETED:
                progress = 100.0
            return msgspec.structs.replace(
                base, status=event.status.value, message=message, progress=progress, updated_at=at
            )
        case events.ProgressReported():
            base = state or JobState(job_id=event.job_id, status=JobStatus.PENDING.value)
            percent = percent_of(event.percent, event.current, event.total)
            return msgspec.structs.replace(
                base,
                phase=event.phase if event.phase is not None else base.phase,
                progress=percent if percent is not None else base.progress,
                current=event.current if event.current is not None else base.current,
                total=event.total if event.total is not None else base.total,
                message=event.message if event.message is not None else base.message,
                updated_at=at,
            )
        case events.CancelRequested():
            base = state or JobState(job_id=event.job_id, status=JobStatus.PENDING.value)
            return msgspec.structs.replace(base, cancel_requested=True, updated_at=at)
    return None


class JobStates:
    """The last state of the most recently changed jobs (bounded).

    A job first seen through a later event (the stream started after its JobRequested, or the job
    was forgotten to stay within bounds) starts from what ``lookup`` (the read model) knows."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[JobState | None]],
        size: int = REMEMBERED_JOBS,
    ) -> None:
        self._lookup = lookup
        self._size = size
        self._states: OrderedDict[str, JobState] = OrderedDict()

    def knows(self, job_id: str) -> bool:
        return job_id in self._states

    def seed(self, state: JobState) -> None:
        """Start a job not known yet from ``state`` (read ahead for a whole read of the stream:
        one query instead of one per job)."""
        if state.job_id not in self._states:
            self._remember(state)

    def _remember(self, state: JobState) -> None:
        self._states[state.job_id] = state
        self._states.move_to_end(state.job_id)
        if len(self._states) > self._size:
            self._states.popitem(last=False)

    def needs_lookup(self, event: events.Event) -> bool:
        """Whether ``update`` must ask the read model first (a job first seen through a later
        event); else ``update_known`` does the same without an ``await``."""
        return event.job_id not in self._states and not isinstance(event, events.JobRequested)

    def update_known(self, event: events.Event) -> JobState | None:
        """``update`` for an event that needs no look-up: a plain call, where an ``await`` per
        event was a few percent of a catch-up's CPU."""
        state = apply(self._states.get(event.job_id), event)
        if state is not None:
            self._remember(state)
        return state

    async def update(self, event: events.Event) -> JobState | None:
        state = self._states.get(event.job_id)
        if state is None and not isinstance(event, events.JobRequested):
            try:
                state = await self._lookup(event.job_id)
            except UNREADABLE:
                # The read models are away (stopped, frozen past the bound, or not known to be
                # this version: streamlookups.py): a stream must not end for one job it cannot
                # look up. A status change tells the status by itself (a job ending while Postgres
                # is down still shows so); any other event is skipped. Neither is remembered:
                # the job is looked up again at its next event, for all the row tells.
                return apply(None, event) if isinstance(event, events.StatusChanged) else None
        state = apply(state, event)
        if state is None:
            return None
        self._remember(state)
        return state


async def update_stream(
    ctx: ApiContext,
    start_seq: int,
    visible: Callable[[events.Event], Awaitable[bool]] | None = None,
    owner: str | None = None,
    lookups: StreamLookups | None = None,
) -> AsyncIterator[bytes]:
    """Yield ``job_update`` frames for every job and ``batch_update`` frames for every batch
    from ``start_seq`` on, forever.

    ``visible`` leaves out the jobs the caller may not see, ``owner`` the batches (a token
    limited to its own jobs). A read of the stream that touched a batch is sent once the
    projector has applied it (the batch's row shows it), all its frames in sequence order.
    ``lookups``: the stream's reads of the read models (``visible``'s too), made here if None."""
    yield sse.retry(ctx.settings.sse_retry_ms)
    if lookups is None:
        lookups = stream_lookups(ctx)

    async def read_model_state(job_id: str) -> JobState | None:
        row = await readmodels.get_job_row(lookups, job_id)
        return state_from_row(row) if row is not None else None

    states = JobStates(read_model_state)
    batches = BatchUpdates(ctx, owner, lookups)
    keepalive = ctx.settings.sse_keepalive_seconds
    buffered = ctx.settings.sse_client_buffer_bytes
    connection = NatsConnection.from_settings(ctx.settings)
    messages = update_messages(
        ctx.js,
        ctx.names,
        start_seq,
        keepalive,
        buffered,
        connection,
        patience=ctx.settings.sse_history_idle_seconds,
    )
    teller = StaleTeller(ctx.fanout)
    probing: asyncio.Task[None] | None = None  # a probe of the read models under way
    probe_ended = asyncio.Event()  # it ended other than by a failed read: wakes the loop
    # Closed in this order: a read under way (``between``) ends before ``messages`` closes.
    async with aclosing(messages), aclosing(teller.between(messages, probe_ended)) as reads:
        try:
            while True:
                try:
                    msgs = await anext(reads)
                except BadRequestError as exc:
                    if not at_consumer_limit(exc):
                        raise
                    # Still at the limit after the retries: say so, and end; the client reconnects
                    # after ``retry`` (with ``Last-Event-ID``), when places may have freed.
                    log.warning(
                        "update stream refused at the stream's consumer limit", detail=str(exc)
                    )
                    yield sse.consumer_limit_reached(ctx.settings.sse_retry_ms)
                    return
                except Exception as exc:
                    if not sse.is_nats_fault(exc):
                        raise
                    # NATS did not answer (paused, unreachable) as the stream opened a consumer or
                    # asked for the stream's state. Every frame sent went whole, so the client
                    # resumes exactly after the last one; a live consumer nats-py makes again by
                    # itself, so this is met only at those requests.
                    log.warning("update stream ended by a NATS fault", error=repr(exc))
                    yield sse.nats_unavailable(ctx.settings.sse_retry_ms)
                    return
                if isinstance(msgs, bytes):  # a ``stale`` frame: NATS went silent, or is back
                    yield msgs
                    continue
                if isinstance(msgs, Woken):
                    # The probe found reads answering again (or ended with an error): the
                    # resync goes now, not at the next keep-alive (up to its interval later).
                    probed(probing)
                    if await lookups.take_resync(ctx.projection):
                        yield sse.resync()
                    continue
                if not msgs:
                    yield sse.comment("keep-alive")
                    probed(probing)
                    if lookups.failed and (probing is None or probing.done()):
                        # In a task of its own: a probe during a freeze waits its bound, and
                        # the next keep-alive's interval begins only when this loop reads on
                        # (awaited here, every probe lengthened the client's silence by it).
                        # Its answer wakes the loop (``probe_ended``), else is taken at the
                        # next keep-alive or read.
                        probing = asyncio.create_task(probe_beside(lookups, probe_ended))
                    if await lookups.take_resync(ctx.projection):
                        yield sse.resync()
                    continue
                frames: list[tuple[int, bytes]] = []
                read: list[tuple[int, events.AnyEvent]] = []
                for seq, data in msgs:
                    try:
                        event = codec.decode(data)
                    except msgspec.MsgspecError:
                        continue
                    if event is not None:
                        read.append((seq, event))
                await read_ahead(lookups, read, states, batches)
                for seq, event in read:
                    # Before the job's own scope check: another's new attempt changes my batch's
                    # counters.
                    if batches.needs_lookup(event):
                        await batches.note(event, seq)
                    else:
                        batches.note_known(event, seq)
                    if isinstance(event, events.BatchEvent):
                        continue
                    if isinstance(event, events.WebhookAttempted):
                        # Nothing a job update shows; skipped before the scope and state look-ups,
                        # which would cost a query per attempt of a job no longer remembered.
                        continue
                    if visible is not None and not await visible(event):
                        continue
                    if states.needs_lookup(event):
                        state = await states.update(event)
                    else:
                        state = states.update_known(event)
                    if state is not None:
                        frames.append((seq, update_frame(seq, state)))
                # Held until the projector has applied this read: frames leave in sequence order.
                # The wait may be NATS's silence itself (the projector's notices come through it).
                async for _ in batches.wait_applied(teller.changed):
                    if (told := teller.news()) is not None:
                        yield told
                    yield sse.comment("keep-alive")
                while True:
                    try:
                        frames += await batches.frames()
                        break
                    except UNREADABLE:
                        # The rows to send are Postgres's alone: waited for, the stream kept open.
                        yield sse.comment("keep-alive")
                        await asyncio.sleep(keepalive)
                if frames:
                    # Stable: a batch's frame follows the job frame of the same event.
                    frames.sort(key=lambda f: f[0])
                    yield b"".join(frame for _, frame in frames)
                lookups.handled(msgs[-1][0])
                probed(probing)
                if await lookups.take_resync(ctx.projection):
                    # After this read's frames: the client's reload covers them too.
                    yield sse.resync()
        except ReadModelsOfAnotherVersion as exc:
            # The API learnt that the stored read models are not this version: every read of
            # the stream would be refused from now on. Said, and ended; the reconnect is
            # answered 503 with the same code.
            log.warning("update stream ended: read models of another version", code=exc.code)
            yield sse.read_models_of_another_version(
                ctx.settings.sse_retry_ms, exc.code, exc.sentence
            )
        finally:
            if probing is not None:
                probing.cancel()
                await ended_probe(probing)


async def probe_beside(lookups: StreamLookups, ended: asyncio.Event) -> None:
    """``lookups.probe``, run beside the stream; ``ended`` set when it ends other than by a
    failed read (reads answer again, or an error the stream must raise): it wakes the stream,
    which sends its ``resync`` (or ends) at once. Not after a failed read: there is nothing to
    tell (the next keep-alive probes again), and while Postgres is stopped every probe is refused
    at once."""
    try:
        answered = await lookups.probe()
    except Exception:  # not a cancel (a BaseException): the stream that cancels it ends
        ended.set()
        raise
    if answered:
        ended.set()


def probed(probing: asyncio.Task[None] | None) -> None:
    """A finished probe's error raised in the stream: read models of another version end it,
    as any read of the stream's would (``probe`` itself passes over Postgres away)."""
    if probing is not None and probing.done() and not probing.cancelled():
        probing.result()


async def ended_probe(probing: asyncio.Task[None]) -> None:
    """Awaits a probe cancelled as its stream ends. Its error is not the stream's any more;
    read models of another version are an answer (another stream says so), but any other error
    is logged: dropped in silence, a bug would never be seen."""
    try:
        await probing
    except (asyncio.CancelledError, ReadModelsOfAnotherVersion):
        pass
    except Exception:
        log.warning("a stream's probe of the read models failed", exc_info=True)


async def read_ahead(
    lookups: StreamLookups,
    read: list[tuple[int, events.AnyEvent]],
    states: JobStates,
    batches: BatchUpdates,
) -> None:
    """The read-model rows of the jobs in ``read`` the stream does not know yet, in one query: a
    burst of changes of jobs requested before the stream's start (a batch's jobs all ending)
    would otherwise cost a query per job, one after the other. A job requested within ``read``
    is left out: its JobRequested, handled first, tells everything (a backlog read from far back
    would otherwise look up nearly every job it shows)."""
    requested = {event.job_id for _, event in read if isinstance(event, events.JobRequested)}
    unknown = {
        event.job_id
        for _, event in read
        if isinstance(event, events.Event)
        and event.job_id not in requested
        and (not states.knows(event.job_id) or not batches.knows(event.job_id))
    }
    if not unknown:
        return
    try:
        rows = await lookups.fetch(
            f"SELECT {readmodels.JOB_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE id = ANY($1::text[])",
            list(unknown),
        )
    except UNREADABLE:
        return  # only a saving: each job's own look-up copes with the read models away
    for row in rows:
        states.seed(state_from_row(row))
        batches.seed(row["id"], row["batch_id"])


async def _opened(
    stack: AsyncExitStack,
    reader: Callable[[], AbstractAsyncContextManager[OrderedReader]],
    patience: float,
    keepalive: float,
) -> AsyncIterator[OrderedReader | None]:
    """``reader`` entered on ``stack``, the last item; before it ``None`` every ``keepalive``
    seconds while the stream holds its limit of consumers and the attempts wait their turn."""
    retry = ConsumerLimitRetry(patience)
    opened = False
    try:
        while True:
            try:
                reader_opened = await stack.enter_async_context(reader())
            except BadRequestError as exc:
                refused = exc
            else:
                opened = True
                yield reader_opened
                return
            # The turn may be longer than ``keepalive`` in coming: waited for in pieces.
            turn = asyncio.ensure_future(retry.wait_turn(refused))
            try:
                while not (await asyncio.wait({turn}, timeout=keepalive))[0]:
                    yield None
            finally:
                if not turn.done():
                    turn.cancel()
                    with contextlib.suppress(asyncio.CancelledError, BadRequestError):
                        await turn
            turn.result()  # the refusal again once the patience is over
    finally:
        retry.release(opened)


async def update_messages(
    js: JetStreamContext,
    names: Names,
    start_seq: int,
    keepalive: float,
    max_bytes: int,
    connection: NatsConnection | None = None,
    *,
    patience: float,
) -> AsyncGenerator[list[tuple[int, bytes]], None]:
    """``(stream sequence, payload)`` of the update kinds from ``start_seq`` on, in batches;
    ``[]`` after ``keepalive`` seconds without one.

    A backlog is read through one wildcard, skipping line messages by subject: nats-server
    delivers a long history through several filter subjects far slower than through one (README
    "Event contracts"; ``python -m bench.updates``). A backlog of more than ``RAW_CATCH_UP_MIN``
    messages is read by the raw stream reader (``common/streamreader.py``: a few µs a message
    where nats-py's per-message path costs several times that), a shorter one through nats-py
    (no extra connection for a client that is nearly at the end). Once caught up, a consumer
    filtering the four kinds and the batch events follows the live stream, so a flood of output
    never reaches this stream.

    A consumer refused at the stream's consumer limit is tried again for up to ``patience``
    seconds (the API passes ``sse_history_idle_seconds``; ``ConsumerLimitRetry``), with ``[]``
    every ``keepalive`` meanwhile; then the refusal (``BadRequestError``, 10026) goes to the
    caller."""
    next_seq = max(start_seq, 1)
    lines_suffix = "." + names.job_kind_subject("x", "lines").rpartition(".")[2]
    caught_up = False
    if connection is not None:
        state = (await js.stream_info(names.stream)).state
        if state.last_seq < max(next_seq, state.first_seq):
            caught_up = True  # nothing stored from here on: the live consumer waits for it
        elif state.last_seq - max(next_seq, state.first_seq) + 1 > RAW_CATCH_UP_MIN:
            raw = StreamReader(
                js,
                connection.servers,
                names.stream,
                names.all_subjects,
                name="jobrunner-api-updates",
                connection=connection,
                skip_subject_suffix=lines_suffix.encode(),
            )
            try:
                await raw.open(next_seq)
                async for batch in raw.batches():
                    next_seq = batch[-1][0] + 1
                    wanted = [(seq, data) for seq, data in batch if data]
                    if wanted:
                        yield wanted
                    if raw.pending == 0:
                        caught_up = True
                        break
            except StreamReaderError as exc:
                # The rest of the backlog comes through nats-py, from exactly where this stopped.
                log.info("update stream's raw catch-up failed", error=str(exc), next_seq=next_seq)
            finally:
                await raw.close()
    if not caught_up:
        async with AsyncExitStack() as stack:
            reader = None
            async for reader in _opened(
                stack,
                lambda: ordered_reader(
                    js,
                    names.stream,
                    names.all_subjects,
                    start_seq=next_seq,
                    max_buffered_bytes=max_bytes,
                ),
                patience,
                keepalive,
            ):
                if reader is None:
                    yield []  # a keep-alive while the stream is at its consumer limit
            assert reader is not None
            while True:
                msgs = await reader.next_batch(CATCH_UP_IDLE_SECONDS)
                if not msgs:
                    break
                next_seq = msgs[-1].metadata.sequence.stream + 1
                wanted = [
                    (m.metadata.sequence.stream, m.data)
                    for m in msgs
                    if not m.subject.endswith(lines_suffix)
                ]
                if wanted:
                    yield wanted
                if msgs[-1].metadata.num_pending == 0:
                    break
    async with AsyncExitStack() as stack:
        reader = None
        async for reader in _opened(
            stack,
            lambda: ordered_reader(
                js,
                names.stream,
                [*(names.kind_subjects(kind) for kind in UPDATE_KINDS), names.batch_events],
                start_seq=next_seq,
                max_buffered_bytes=max_bytes,
            ),
            patience,
            keepalive,
        ):
            if reader is None:
                yield []
        assert reader is not None
        while True:
            yield [(m.metadata.sequence.stream, m.data) for m in await reader.next_batch(keepalive)]
