"""Ordered readers after nats-py reconnects (``subscription.reopen_after_reconnect``): a reader
whose consumer the server lost opens again from the message after the last one it got; one whose
consumer is still there (the connection dropped, the server did not restart) goes on with it.
Every message once, in order, either way.

The connection is cut by a TCP proxy in the test (not a mock: every byte that flows is the real
server's)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js import JetStreamContext, api

from jobrunner.common import eventstore, subscription
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import OrderedReader, ordered_reader
from jobrunner.contracts.names import Names

pytestmark = pytest.mark.timeout(180)

# Below nats-py's own recovery of a lost ordered consumer: its activity check every two idle
# heartbeats (2 x 5 s) finds them missed, 10 to 20 s after they stopped.
SOON = 3.0


class CuttingProxy:
    """A TCP proxy to nats-server that cuts the connections through it on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self._writers += [cw, uw]
        for src, dst in ((cr, uw), (ur, cw)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await src.read(1 << 16):
                dst.write(chunk)
                await dst.drain()
        dst.close()


def server_address(settings: Settings) -> tuple[str, int]:
    host, port = settings.nats_url.rsplit("//", 1)[1].rsplit(":", 1)
    return host, int(port)


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy(*server_address(settings)) as running:
        yield running


async def read_until(reader: OrderedReader, seen: list[int], count: int) -> None:
    async with asyncio.timeout(SOON):
        while len(seen) < count:
            seen += [m.metadata.sequence.stream for m in await reader.next_batch(SOON)]


def consumer_name(reader: OrderedReader) -> str:
    assert reader.sub is not None
    return str(reader.sub._consumer)


async def test_readers_near_the_consumer_limit_go_on_after_a_connection_cut(
    settings: Settings, js: JetStreamContext, proxy: CuttingProxy
) -> None:
    """A cut without a server restart: the server still has every reader's consumer, and they
    go on with it. (Made again on every reconnect, each old one took a place under
    ``stream_max_consumers`` ~5 s more: near the limit the creates were refused and those
    readers got nothing until nats-py's own check.)"""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("limit", "lines")
    await js.publish(subject, b"first")
    info = await js.stream_info(names.stream)
    readers = 5
    config = info.config
    config.max_consumers = info.state.consumer_count + readers + 1
    await js.update_stream(config)
    cut_settings = msgspec.structs.replace(settings, nats_url=f"nats://127.0.0.1:{proxy.port}")
    nc = await eventstore.connect(cut_settings, "limit-reader")
    reader_js = nc.jetstream()
    try:
        async with contextlib.AsyncExitStack() as stack:
            opened = [
                await stack.enter_async_context(
                    ordered_reader(
                        reader_js, names.stream, names.job_subjects("limit"), start_seq=1
                    )
                )
                for _ in range(readers)
            ]
            for reader in opened:
                assert len(await reader.next_batch(5)) == 1
            consumers = [consumer_name(reader) for reader in opened]
            proxy.cut()
            async with asyncio.timeout(5):
                while not nc.is_connected:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            await js.publish(subject, b"second")
            silent = 0
            for reader in opened:
                got: list[int] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SOON):
                        while not got:
                            got = [m.metadata.sequence.stream for m in await reader.next_batch(3)]
                silent += not got
            assert silent == 0, f"{silent} of {readers} readers got nothing within 3 s of a cut"
            assert [consumer_name(reader) for reader in opened] == consumers, "made again"
    finally:
        await eventstore.close(nc)


async def test_a_kv_watch_at_the_consumer_limit_goes_on_after_a_connection_cut(
    settings: Settings, js: JetStreamContext, proxy: CuttingProxy
) -> None:
    """The same for nats-py's KV watch (the runners' lock board): after a cut without a server
    restart it goes on with its consumer, takes no second place under the bucket stream's
    consumer limit, and gets the next change once. (Made again on every reconnect, the second
    consumer was refused at the limit and the watch heard nothing until nats-py's own check.)"""
    bucket = f"cut_{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    cut_settings = msgspec.structs.replace(settings, nats_url=f"nats://127.0.0.1:{proxy.port}")
    nc = await eventstore.connect(cut_settings, "limit-watch")
    try:
        await kv.put("a", b"1")
        watcher = await (await nc.jetstream().key_value(bucket)).watchall()
        first = await watcher.updates(timeout=5)  # type: ignore[no-untyped-call]
        assert (first.key, first.value) == ("a", b"1")
        assert await watcher.updates(timeout=5) is None  # type: ignore[no-untyped-call]
        stream = f"KV_{bucket}"
        config = (await js.stream_info(stream)).config
        config.max_consumers = 1  # the watch's: no room for a second
        await js.update_stream(config)
        consumer = watcher._sub._consumer
        proxy.cut()
        async with asyncio.timeout(5):
            while not nc.is_connected:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        await kv.put("b", b"2")
        update = await watcher.updates(timeout=SOON)  # type: ignore[no-untyped-call]
        assert (update.key, update.value) == ("b", b"2")
        await kv.put("a", b"3")
        update = await watcher.updates(timeout=SOON)  # type: ignore[no-untyped-call]
        assert (update.key, update.value) == ("a", b"3")
        assert watcher._sub._consumer == consumer, "made again"
        assert (await js.stream_info(stream)).state.consumer_count == 1
        await watcher.stop()  # type: ignore[no-untyped-call]
    finally:
        await eventstore.close(nc)
        await js.delete_key_value(bucket)


def raw_request(settings: Settings, lines: bytes, replies: int) -> None:
    """Send ``lines`` to nats-server on a connection of its own, blocking (the event loop does
    not run meanwhile), and wait for ``replies`` messages to its inbox ``raw.in`` and a PONG."""
    with socket.create_connection(server_address(settings)) as raw:
        raw.recv(4096)  # INFO
        raw.sendall(b'CONNECT {"verbose":false}\r\nSUB raw.in 1\r\n' + lines + b"PING\r\n")
        got = b""
        while got.count(b"MSG raw.in") < replies or b"PONG" not in got:
            got += raw.recv(4096)


async def test_a_reader_opened_again_gets_nothing_twice_that_arrived_before_its_check_ran(
    settings: Settings, js: JetStreamContext
) -> None:
    """Its consumer gone, a reader opens again from the message after the last one it got, read
    once its old subscription is dropped: messages the read loop handles between the reconnect
    and that moment (its wake-up queued already, as when data arrive in the same poll that ends
    the reconnect's flush) do not come again from the new consumer. (The start was read as the
    reconnect's callback ran: those messages came twice.)"""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("race", "lines")
    for _ in range(3):
        await js.publish(subject, b"x")
    seen: list[int] = []
    async with ordered_reader(js, names.stream, names.job_subjects("race"), start_seq=1) as reader:
        await read_until(reader, seen, 3)
        # Three more, then the consumer deleted, on another connection while the event loop
        # waits: the three are in the reader's socket, not read yet, and the consumer is gone.
        raw_request(settings, b"PUB %s 1\r\nx\r\n" % subject.encode() * 3, 0)
        time.sleep(0.3)  # noqa: ASYNC251 - the deliveries reach the socket, the loop not run
        delete = f"$JS.API.CONSUMER.DELETE.{names.stream}.{consumer_name(reader)}".encode()
        raw_request(settings, b"PUB %s raw.in 0\r\n\r\n" % delete, 1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the read loop's wake-up is now queued ahead of the reopen
        assert subscription.reopen_after_reconnect(js._nc) == 1
        await js.publish(subject, b"x")
        await read_until(reader, seen, 7)
        await asyncio.sleep(1.0)  # what the new consumer sends again
        seen += [m.metadata.sequence.stream for m in await reader.next_batch(0.5)]
    assert seen == [1, 2, 3, 4, 5, 6, 7], seen


async def test_a_kv_watch_made_again_gets_nothing_twice_that_arrived_before_its_check_ran(
    settings: Settings, js: JetStreamContext
) -> None:
    """The same for a KV watch: its consumer gone, it is made again from the entry after the
    last one nats-py read off the socket, that start read as nats-py drops the old deliver
    subject; entries read between the reconnect and then do not come again. (The start read as
    the reconnect's callback ran: they came twice.)"""
    bucket = f"race_{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    revisions: list[int] = []

    async def until(count: int) -> None:
        async with asyncio.timeout(SOON):
            while len(revisions) < count:
                entry = await watcher.updates(timeout=SOON)  # type: ignore[no-untyped-call]
                if entry is not None:
                    revisions.append(entry.revision)

    try:
        for key in "abc":
            await kv.put(key, b"x")
        watcher = await kv.watchall()
        await until(3)
        # Three more, then the consumer deleted, on another connection while the event loop
        # waits: the three are in the watch's socket, not read yet, and the consumer is gone.
        raw_request(
            settings,
            b"".join(
                b"PUB $KV.%s.%s 1\r\nx\r\n" % (bucket.encode(), k) for k in (b"d", b"e", b"f")
            ),
            0,
        )
        time.sleep(0.3)  # noqa: ASYNC251 - the deliveries reach the socket, the loop not run
        delete = f"$JS.API.CONSUMER.DELETE.KV_{bucket}.{watcher._sub._consumer}".encode()
        raw_request(settings, b"PUB %s raw.in 0\r\n\r\n" % delete, 1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the read loop's wake-up is now queued ahead of the reopen
        assert subscription.reopen_after_reconnect(js._nc) == 1
        await kv.put("g", b"x")
        await until(7)
        await asyncio.sleep(1.0)  # what the new consumer sends again
        with contextlib.suppress(nats.errors.TimeoutError):
            while (entry := await watcher.updates(timeout=0.5)) is not None:  # type: ignore[no-untyped-call]
                revisions.append(entry.revision)
        await watcher.stop()  # type: ignore[no-untyped-call]
    finally:
        await js.delete_key_value(bucket)
    assert revisions == [1, 2, 3, 4, 5, 6, 7], revisions


async def test_a_kv_watch_whose_create_is_refused_tries_again_at_the_next_reconnect(
    js: JetStreamContext,
) -> None:
    """A watch's consumer gone and its stream at its consumer limit: each create is refused, and
    a reconnect meanwhile makes it try again at once, as a reader does, not after the rest of
    its wait (the create's 5 s request timeout, then up to 5 s of backoff): the runners' lock
    board blind that long after NATS came back."""
    bucket = f"refused_{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    stream = f"KV_{bucket}"
    try:
        watcher, config, allowed = await watch_with_no_room_for_its_consumer(js, kv, stream)
        assert subscription.reopen_after_reconnect(js._nc) == 1
        await kv.put("b", b"2")
        for _ in range(3):  # NATS away and back again, the create refused each time
            await asyncio.sleep(0.3)
            assert subscription.reopen_after_reconnect(js._nc) == 0
        await asyncio.sleep(0.3)
        with pytest.raises(nats.errors.TimeoutError):
            await watcher.updates(timeout=0.1)
        config.max_consumers = allowed
        await js.update_stream(config)
        assert subscription.reopen_after_reconnect(js._nc) == 0  # under way: tries again now
        update = await watcher.updates(timeout=1.0)
        assert (update.key, update.value) == ("b", b"2")
        assert (await js.stream_info(stream)).state.consumer_count == 2  # the filler, the watch
        await watcher.stop()
    finally:
        await js.delete_key_value(bucket)


async def test_a_reader_whose_create_is_refused_tries_again(
    settings: Settings, js: JetStreamContext
) -> None:
    """Its consumer gone, and the stream at its consumer limit: the create is refused, and the
    reader tries again until there is room, not until nats-py's own check (10 to 20 s)."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("refused", "lines")
    await js.publish(subject, b"x")
    seen: list[int] = []
    async with ordered_reader(
        js, names.stream, names.job_subjects("refused"), start_seq=1
    ) as reader:
        await read_until(reader, seen, 1)
        await js.delete_consumer(names.stream, consumer_name(reader))
        # Another consumer takes the last place (a limit of 0 would mean none).
        await js.add_consumer(names.stream, name="filler", filter_subject=subject)
        info = await js.stream_info(names.stream)
        config = info.config
        allowed = config.max_consumers
        config.max_consumers = info.state.consumer_count  # no room for one more
        await js.update_stream(config)
        assert subscription.reopen_after_reconnect(js._nc) == 1
        await js.publish(subject, b"x")
        await asyncio.sleep(1.0)  # refused meanwhile, several times
        assert await reader.next_batch(0) == []
        config.max_consumers = allowed
        await js.update_stream(config)
        await read_until(reader, seen, 2)
    assert seen == [1, 2]


async def test_a_kv_watch_whose_create_is_refused_tries_again_soon(
    js: JetStreamContext,
) -> None:
    """A watch's consumer gone and its stream at its consumer limit, no reconnect meanwhile: the
    refused create is tried again after a short backoff, and the watch gets the next change soon
    after room is made. (The refusal went only to the client's error callback and the reopen
    waited out the create's 5 s request timeout before its first retry.)"""
    bucket = f"refused_soon_{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    # A create that waited out its request timeout before the retry would take 30 s: far past
    # the bound below, however slow the machine.
    js._timeout = 30.0
    stream = f"KV_{bucket}"
    try:
        watcher, config, allowed = await watch_with_no_room_for_its_consumer(js, kv, stream)
        assert subscription.reopen_after_reconnect(js._nc) == 1
        await kv.put("b", b"2")
        await asyncio.sleep(1.0)  # refused meanwhile
        config.max_consumers = allowed
        await js.update_stream(config)
        # Retries 0.25, 0.5, 1, 2 s apart: the third, about 1.75 s after the first, finds room.
        update = await watcher.updates(timeout=10.0)
        assert (update.key, update.value) == ("b", b"2")
        assert (await js.stream_info(stream)).state.consumer_count == 2  # the filler, the watch
        await watcher.stop()
    finally:
        await js.delete_key_value(bucket)


async def watch_with_no_room_for_its_consumer(
    js: JetStreamContext, kv: Any, stream: str
) -> tuple[Any, api.StreamConfig, int | None]:
    """A watch of ``kv`` that has read "a", its consumer then deleted and the stream set to the
    consumers it has (a filler's): no room to make it again. The watch, the stream's config and
    the consumer limit it had."""
    await kv.put("a", b"1")
    watcher = await kv.watchall()
    first = await watcher.updates(timeout=5)
    assert (first.key, first.value) == ("a", b"1")
    assert await watcher.updates(timeout=5) is None
    await js.delete_consumer(stream, watcher._sub._consumer)
    await js.add_consumer(stream, name="filler")
    info = await js.stream_info(stream)
    config = info.config
    allowed = config.max_consumers
    config.max_consumers = info.state.consumer_count  # no room for one more
    await js.update_stream(config)
    return watcher, config, allowed
