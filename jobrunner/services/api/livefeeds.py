"""The API's live feeds of jobs, many on a few raw NATS connections.

Each watched job has one pull consumer (ephemeral, no acknowledgements), read over the NATS
protocol itself (no nats-py parser, ``Msg``, header dict, queue or callback task per message:
about a quarter of the API's CPU while it fans lines out). Every feed's subscription is one
``SUB`` on one of a few connections shared by all feeds (``sse_feed_connections``, 4 by
default): the API's NATS sockets stay capped however many jobs are watched.

Why pull, not push: a push consumer may have up to 32 MiB on its way before the server waits for
a flow-control reply, and on a shared connection a flood's data would then queue ahead of every
other job's line. A feed here asks for at most ``PULL_BYTES`` at a time and asks again only while
it holds less than ``FEED_BYTES`` not taken: a flood, or a feed whose viewers are slow, has at
most that much in the socket and in memory, and the connection is always read, so the other
feeds on it never wait behind it. A message larger than ``PULL_BYTES`` is asked for alone.

Failures: each connection tries the servers (configured, then announced by the cluster) in an
order of its own (shuffled, as nats-py's pool: the connections spread over a cluster), the
server it lost last tried last, each connect step within ``nats_connect_timeout_seconds``;
retries back off with jitter. A connection that hears nothing for ``heartbeat`` seconds sends a
PING; silence for ``DEAD_AFTER`` heartbeats means it is lost. Its feeds then move to the
connections still up (or wait for one): each creates a new consumer after the last message it
received, so nothing is skipped and nothing comes twice. A feed whose pull gets neither a
message nor the server's idle heartbeat for as long (its consumer's server frozen, the consumer
gone) or an unexpected status, or a gap in its deliveries, starts a new consumer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import uuid
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

import nats.errors
import structlog
from nats.js import JetStreamContext, api

from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.streamreader import StreamReaderError, _reason, _without_credentials

log = structlog.get_logger()

# Connections the feeds share (the setting's default).
DEFAULT_CONNECTIONS = 4
# What one pull asks for at most, and what a feed holds not taken before it asks no more.
PULL_BYTES = 256 * 1024
FEED_BYTES = 1024 * 1024
# Messages one pull asks for (bytes bound it first); how long a pull waits at the server.
PULL_BATCH = 1_000_000
PULL_EXPIRES = 30.0
# The server's idle heartbeat on a waiting pull, and the connection's PING after that much
# silence; this many heartbeats without a sound is a lost connection (or consumer).
HEARTBEAT_SECONDS = 5.0
DEAD_AFTER = 3
# Backoff between rounds of connects to every server, and between a feed's consumer attempts.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

# A stored message (headers, a v1 reply subject ``$JS.ACK.<stream>.<consumer>.<delivered>.
# <stream seq>.<consumer seq>.<time>.<pending>``), matched in one C call; its sid names the feed.
_DELIVERY = re.compile(
    rb"HMSG [^ \r\n]+ (\d+) \$JS\.ACK\.[^ .\r\n]+\.[^ .\r\n]+\.\d+\.(\d+)\.(\d+)\.\d+\.(\d+) "
    rb"(\d+) (\d+)\r\n"
)


def backoff(failures: int) -> float:
    """Seconds before attempt ``failures + 1``: doubling, capped, with jitter (many feeds or
    connections that failed together do not come back together)."""
    return float(min(BACKOFF_FIRST * 2**failures, BACKOFF_MAX) * random.uniform(0.5, 1.5))


class LiveFeed:
    """One job's messages from a sequence on, as ``(stream sequence, payload)`` batches."""

    def __init__(self, pool: LiveFeeds, subjects: str) -> None:
        self._pool = pool
        self._subjects = subjects
        self.last_seq = 0  # the last message received (taken, or in the batch)
        self._batch: list[tuple[int, bytes]] = []
        self._bytes = 0
        self._pending = b"0"  # after the batch's last message, as the server counted
        self._arrived = asyncio.Event()
        # On a connection: its sid, the consumer, the deliveries so far, the pull under way.
        self.link: Link | None = None
        self.sid = 0
        self._inbox = b""
        self._consumer: str | None = None
        self._consumer_seq = 0
        self._asked = 0  # messages the pull under way may still bring; 0: none under way
        self._got = 0  # messages it brought
        self._alone = False  # the next pull asks for one message of any size
        self.heard = 0.0  # loop time of the last sound for this feed
        self._resuming: asyncio.Task[None] | None = None
        self._closed = False
        self.restarts = 0  # consumers started after the first (a figure for tests)
        # Called after each arrival, in the connection's read callback: it may ``take`` the
        # batch there and then (True); else (False) ``next_batch`` is woken as usual.
        self.on_arrival: Callable[[], bool] | None = None
        # How many messages the stream held after the last one taken, as the server counted
        # when it sent that one: 0 means the feed had caught up then.
        self.pending = 0

    # --- for the feed's user

    async def start(self, start_seq: int) -> None:
        """Start at ``start_seq``; raises ``StreamReaderError`` when no connection comes up or
        the consumer cannot be created within the connect deadline."""
        self.last_seq = start_seq - 1
        await self._attach(await self._pool.link_up(first=True))

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the messages arrived and not taken yet."""
        return self._bytes

    def take(self) -> list[tuple[int, bytes]]:
        """The messages that arrived since the last take, oldest first, without waiting."""
        batch, self._batch, self._bytes = self._batch, [], 0
        self.pending = int(self._pending)
        self._arrived.clear()
        if not self._asked and self.link is not None and self._consumer is not None:
            self._pull()
        return batch

    async def next_batch(self, timeout: float | None) -> list[tuple[int, bytes]]:
        """The messages that arrived since the last call, oldest first; waits up to ``timeout``
        seconds for at least one, and answers ``[]`` when none came (the job is quiet, the feed
        is reconnecting, or ``on_arrival`` took them)."""
        if not self._batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
        return self.take()

    async def close(self) -> None:
        """Stop: the subscription ends, the consumer is deleted."""
        self._closed = True
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._resuming
        consumer = self._consumer
        self._detach()
        self._pool.feeds.discard(self)
        if consumer is not None:
            # Gone already, or NATS is down: it expires by itself (``inactive_threshold``).
            with contextlib.suppress(Exception):
                await self._pool.js.delete_consumer(self._pool.stream, consumer)

    # --- on a connection

    async def _attach(self, link: Link) -> None:
        """Subscribe on ``link`` and create the consumer after ``last_seq``; the first pull."""
        self.sid = link.subscribe(self)
        self.link = link
        self._inbox = link.inbox(self.sid)
        self._pool.feeds.add(self)
        self.heard = asyncio.get_running_loop().time()
        pool = self._pool
        config = api.ConsumerConfig(
            filter_subject=self._subjects,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.last_seq + 1,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sid = self.sid
        try:
            async with asyncio.timeout(pool.connect_timeout * 2):
                info = await pool.js.add_consumer(pool.stream, config)
        except (nats.errors.Error, TimeoutError) as exc:
            if self.sid == sid:
                self._detach()
            raise StreamReaderError(f"cannot create the consumer: {exc!r}") from exc
        if self.sid != sid or self._closed:  # the connection went meanwhile: start again
            with contextlib.suppress(Exception):
                await pool.js.delete_consumer(pool.stream, info.name)
            if not self._closed:
                raise StreamReaderError("the connection was lost while the consumer started")
            return
        self._consumer = info.name
        self._consumer_seq = 0
        self._asked = 0
        self._alone = False
        if self._bytes < FEED_BYTES:
            self._pull()

    def _pull(self) -> None:
        link, consumer = self.link, self._consumer
        assert link is not None
        assert consumer is not None
        request = {
            "batch": PULL_BATCH,
            "max_bytes": PULL_BYTES,
            "expires": int(PULL_EXPIRES * 1e9),
            "idle_heartbeat": int(self._pool.heartbeat * 1e9),
        }
        if self._alone:  # one message, whatever its size
            request["batch"] = 1
            del request["max_bytes"]
        self._asked = request["batch"]
        self._alone = False
        self._got = 0
        self.heard = asyncio.get_running_loop().time()
        body = json.dumps(request).encode()
        subject = b"%s.%s.%s" % (self._pool.next_prefix, self._pool.stream_bytes, consumer.encode())
        link.send(b"PUB %s %s %d\r\n%s\r\n" % (subject, self._inbox, len(body), body))

    def _pull_done(self) -> None:
        """The pull under way is over: ask again while the feed holds little enough."""
        self._asked = 0
        if self._bytes < FEED_BYTES and self._consumer is not None:
            self._pull()

    def received(self, seq: int, consumer_seq: int, pending: bytes, data: bytes) -> bool:
        """A delivery (in the connection's read callback); False: out of order, the feed
        starts a new consumer after its last message (the delivery is dropped)."""
        if consumer_seq != self._consumer_seq + 1:
            self.restart(f"expected delivery {self._consumer_seq + 1}, got {consumer_seq}")
            return False
        self._consumer_seq = consumer_seq
        self.last_seq = seq
        self._pending = pending
        self._batch.append((seq, data))
        self._bytes += len(data)
        self._got += 1
        if self._asked:
            self._asked -= 1
            if not self._asked:
                self._pull_done()
        return True

    def arrived(self) -> None:
        """The messages of a read are in (after ``received``)."""
        if self.on_arrival is None or not self.on_arrival():
            self._arrived.set()

    def status(self, code: bytes, headers: bytes) -> None:
        """A status on the feed's inbox: a heartbeat, the end of a pull, or a consumer gone."""
        if code == b"100":
            return
        if code == b"408" or (code == b"409" and b"Exceeds MaxBytes" in headers):
            if code == b"409" and not self._got:
                self._alone = True  # the next message is larger than a pull's bytes
            self._pull_done()
            return
        if code == b"409" and b"Batch Completed" in headers:
            self._pull_done()
            return
        self.restart(headers.split(b"\r\n", 1)[0].decode(errors="replace"))

    def restart(self, reason: str) -> None:
        """Leave this consumer (and connection) and start a new one after ``last_seq``."""
        if self._closed:
            return
        consumer = self._consumer
        self._detach()
        if consumer is not None:
            self._pool.delete_later(consumer)
        if self._resuming is None or self._resuming.done():
            log.info("sse live feed restarts", after=self.last_seq, reason=reason)
            self._resuming = asyncio.create_task(self._resume(), name="sse-live-feed-resume")

    async def _resume(self) -> None:
        failures = 0
        while not self._closed:
            try:
                await self._attach(await self._pool.link_up())
                self.restarts += 1
                return
            except StreamReaderError as exc:
                log.warning("sse live feed cannot resume", after=self.last_seq, reason=str(exc))
            await asyncio.sleep(backoff(failures))
            failures += 1

    def _detach(self) -> None:
        link = self.link
        if link is not None:
            link.unsubscribe(self.sid)
        self.link = None
        self.sid = 0
        self._consumer = None
        self._asked = 0


class _Wire(asyncio.Protocol):
    """One TCP connection's callbacks, handed to its link while it is the link's current one
    (an aborted connection's last callbacks come after the next one began)."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        if self._link.wire is self:
            self._link.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link.wire is self:
            self._link.connection_lost(exc)


class Link:
    """One connection of the pool and the feeds subscribed on it, by sid."""

    def __init__(self, pool: LiveFeeds, number: int) -> None:
        self._pool = pool
        self.number = number
        self.feeds: dict[int, LiveFeed] = {}
        self._next_sid = 0
        self._prefix = f"_INBOX.{uuid.uuid4().hex}".encode()
        self._transport: asyncio.BaseTransport | None = None
        self.wire: _Wire | None = None
        self._buffer = b""
        self._handshake: asyncio.Queue[bytes] | None = None
        self.up = False
        self.heard = 0.0
        self.server = ""  # host:port while up
        self._lost = asyncio.Event()
        self._last_failed: str | None = None
        self._announced_by: SplitResult | None = None
        self.task: asyncio.Task[None] | None = None

    # --- the feeds

    def subscribe(self, feed: LiveFeed) -> int:
        self._next_sid += 1
        sid = self._next_sid
        self.feeds[sid] = feed
        self.send(b"SUB %s %d\r\n" % (self.inbox(sid), sid))
        return sid

    def inbox(self, sid: int) -> bytes:
        return b"%s.%d" % (self._prefix, sid)

    def unsubscribe(self, sid: int) -> None:
        if self.feeds.pop(sid, None) is not None and self.up:
            self.send(b"UNSUB %d\r\n" % sid)

    def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    # --- its life

    async def run(self) -> None:
        """Connect, serve the feeds until the connection is lost, move them, connect again."""
        failures = 0
        while True:
            try:
                await self._connect()
            except StreamReaderError as exc:
                log.warning("sse feed connection cannot connect", reason=str(exc))
                await asyncio.sleep(backoff(failures))
                failures += 1
                continue
            failures = 0
            self.up = True
            self._pool.came_up()
            try:
                await self._watch()
            finally:
                self._down("lost")

    async def _watch(self) -> None:
        """Until lost: a PING after a heartbeat's silence; a feed whose pull went silent
        starts a new consumer."""
        loop = asyncio.get_running_loop()
        beat = self._pool.heartbeat
        dead = beat * DEAD_AFTER
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(beat):
                    await self._lost.wait()
            if self._lost.is_set():
                return
            now = loop.time()
            if now - self.heard > dead:
                log.warning("sse feed connection silent", server=self.server, seconds=dead)
                return
            if now - self.heard >= beat:
                self.send(b"PING\r\n")
                continue  # the feeds' silence counts once the connection answers
            for feed in list(self.feeds.values()):
                if feed._asked and now - feed.heard > dead:
                    feed.restart(f"no message nor heartbeat for {dead:g} s")

    def _down(self, why: str) -> None:
        self.up = False
        self._last_failed = self.server or None
        self.wire = None
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]
            self._transport = None
        self._buffer = b""
        self._lost.clear()
        feeds = list(self.feeds.values())
        self.feeds.clear()
        for feed in feeds:
            feed.restart(f"connection {why}")

    async def _connect(self) -> None:
        servers = self._pool.order(self.number)
        if self._last_failed is not None:  # the server just lost is tried last
            servers.sort(key=lambda s: _without_credentials(s) == self._last_failed)
        errors = []
        for server in servers:
            where = _without_credentials(server)
            try:
                await self._connect_to(server)
                self.server = where
                return
            except (TimeoutError, OSError, ValueError, ssl.SSLError, StreamReaderError) as exc:
                reason = _reason(exc)
                log.warning("sse feed connection cannot connect", server=where, reason=reason)
                errors.append(f"{where}: {reason}")
                self.wire = None
                if self._transport is not None:
                    self._transport.abort()  # type: ignore[attr-defined]
                    self._transport = None
        raise StreamReaderError("cannot connect to NATS: " + "; ".join(errors))

    async def _connect_to(self, server: str) -> None:
        pool = self._pool
        url = urlsplit(server if "://" in server else f"nats://{server}")
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        timeout = pool.connect_timeout
        loop = asyncio.get_running_loop()
        self._handshake = asyncio.Queue()
        self._buffer = b""
        self._lost.clear()
        wire = self.wire = _Wire(self)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: wire, host, port), timeout
            )
        except TimeoutError:
            raise StreamReaderError(f"no TCP connection within {timeout:g} s") from None
        self._transport = transport
        try:
            first = await asyncio.wait_for(self._handshake.get(), timeout)
        except TimeoutError:
            raise StreamReaderError(f"no INFO from the server within {timeout:g} s") from None
        if not first.startswith(b"INFO "):
            raise StreamReaderError(f"not a NATS server: it began with {first[:40]!r}")
        info = json.loads(first.removeprefix(b"INFO "))
        pool.learn(info, url)
        self._announced_by = url
        if url.scheme == "tls" or info.get("tls_required"):
            context = pool.tls or ssl.create_default_context()
            try:
                self._transport = await asyncio.wait_for(
                    loop.start_tls(
                        transport, wire, context, server_hostname=pool.tls_hostname or host
                    ),
                    timeout,
                )
            except TimeoutError:
                raise StreamReaderError(f"no TLS handshake within {timeout:g} s") from None
        connect: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python",
            "version": "jobrunner-livefeeds",
            "name": "jobrunner-api-feeds",
        }
        # Taken as written, not percent-decoded: exactly what nats-py sends for the same URL.
        if url.username and url.password is not None:
            connect |= {"user": url.username, "pass": url.password}
        elif url.username:
            connect["auth_token"] = url.username
        if pool.connection is not None and pool.connection.signs:
            nonce = info.get("nonce")
            if not isinstance(nonce, str):
                raise StreamReaderError("the server sent no nonce to sign with the NKey")
            try:
                connect |= pool.connection.signed_identity(nonce)
            except Exception as exc:  # the seed or creds file changed since the start
                raise StreamReaderError(f"cannot sign in with the NKey: {exc!r}") from None
        self.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        while True:
            try:
                line = await asyncio.wait_for(self._handshake.get(), timeout)
            except TimeoutError:
                raise StreamReaderError(
                    f"no answer to CONNECT from the server within {timeout:g} s"
                ) from None
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise StreamReaderError(line.decode(errors="replace"))
            if line == b"PING":
                self.send(b"PONG\r\n")
        self._handshake = None
        self.heard = loop.time()

    # --- the current wire's

    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time()
        if self._handshake is not None:  # lines only until the PONG (no feed subscribed yet)
            buf = self._buffer + data
            while (end := buf.find(b"\r\n")) >= 0:
                self._handshake.put_nowait(buf[:end])
                buf = buf[end + 2 :]
            self._buffer = buf
            return
        self._parse(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()
        if self._handshake is not None:
            self._handshake.put_nowait(b"-ERR connection closed")

    # --- the protocol

    def _parse(self, chunk: bytes) -> None:
        buf = self._buffer + chunk if self._buffer else chunk
        self._buffer = b""
        pos = 0
        feeds = self.feeds
        delivery = _DELIVERY.match
        touched: dict[LiveFeed, None] = {}
        now = self.heard
        while True:
            found = delivery(buf, pos)
            if found is not None:
                sid, seq, consumer_seq, pending, header_size, total = found.groups()
                body = found.end()
                after = body + int(total)
                if after + 2 > len(buf):
                    break  # the rest of this message is in the next read
                pos = after + 2
                feed = feeds.get(int(sid))
                if feed is not None:
                    feed.heard = now
                    data = buf[body + int(header_size) : after]
                    if feed.received(int(seq), int(consumer_seq), pending, data):
                        touched[feed] = None
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            if head.startswith(b"HMSG ") or head.startswith(b"MSG "):
                parts = head.split(b" ")
                total = int(parts[-1])
                header_size = int(parts[-2]) if parts[0] == b"HMSG" else 0
                body = end + 2
                if body + total + 2 > len(buf):
                    break
                pos = body + total + 2
                feed = feeds.get(int(parts[2]))
                if feed is None:
                    continue  # a feed that left (its last messages in flight)
                feed.heard = now
                with_reply = len(parts) == (6 if parts[0] == b"HMSG" else 5)
                reply = parts[3] if with_reply else b""
                if reply.startswith(b"$JS.ACK."):  # a stored message, another reply form
                    position = _position(reply)
                    if position is None:
                        feed.restart(f"not a JetStream delivery: {reply!r}")
                    elif feed.received(
                        position[0],
                        position[1],
                        position[2],
                        buf[body + header_size : body + total],
                    ):
                        touched[feed] = None
                else:
                    headers = buf[body : body + header_size]
                    code = headers[9:12] if headers.startswith(b"NATS/1.0 ") else b""
                    feed.status(code, headers)
            elif head == b"PING":
                self.send(b"PONG\r\n")
                pos = end + 2
            elif head.startswith(b"-ERR"):
                log.warning("sse feed connection error", error=head.decode(errors="replace"))
                pos = end + 2
            elif head.startswith(b"INFO "):  # the cluster changed: nodes joined or left
                with contextlib.suppress(ValueError):
                    self._pool.learn(json.loads(head[5:]), self._announced_by)
                pos = end + 2
            else:  # PONG, +OK
                pos = end + 2
        self._buffer = buf[pos:]
        for feed in touched:
            feed.arrived()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.wire = None
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]
            self._transport = None


def _position(reply: bytes) -> tuple[int, int, bytes] | None:
    """Stream sequence, consumer sequence and pending count of a ``$JS.ACK`` reply subject in
    either form (v2 adds a domain and an account hash after ``ACK``)."""
    tokens = reply.split(b".")
    base = 2 if len(tokens) == 9 else 4
    try:
        pending = tokens[base + 6]
        int(pending)
        return int(tokens[base + 3]), int(tokens[base + 4]), pending
    except (IndexError, ValueError):
        return None


class LiveFeeds:
    """The pool: ``size`` connections, opened when the first feed starts (or ``warm``)."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        servers: list[str],
        size: int = DEFAULT_CONNECTIONS,
        connection: NatsConnection | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
        api_prefix: str = "$JS.API",
    ) -> None:
        self.js = js
        self.stream = stream
        self.stream_bytes = stream.encode()
        self.next_prefix = f"{api_prefix}.CONSUMER.MSG.NEXT".encode()
        self.servers = servers
        self.discovered: list[str] = []  # announced by the cluster, not configured
        self.size = max(1, size)
        self.connection = connection
        self.connect_timeout = connection.connect_timeout if connection else 2.0
        self.tls = connection.tls if connection else None
        self.tls_hostname = connection.tls_hostname if connection else None
        self.heartbeat = heartbeat
        self.links: list[Link] = []
        self.feeds: set[LiveFeed] = set()
        self._up = asyncio.Event()
        self._shuffled: list[str] | None = None
        self.connects = 0  # connections made, reconnects included (a figure for tests)
        self._deleting: set[asyncio.Task[None]] = set()

    def warm(self) -> None:
        """Start connecting (the first viewer then waits for no handshake)."""
        while len(self.links) < self.size:
            link = Link(self, len(self.links))
            link.task = asyncio.create_task(link.run(), name=f"sse-feed-connection-{link.number}")
            self.links.append(link)

    def feed(self, subjects: str) -> LiveFeed:
        self.warm()
        return LiveFeed(self, subjects)

    async def link_up(self, first: bool = False) -> Link:
        """The connection up with the fewest feeds; waits for one (``first``: a feed's start,
        at most as long as connecting to every server takes, then ``StreamReaderError``)."""
        self.warm()
        deadline = self.connect_timeout * (4 * (len(self.servers) + len(self.discovered)) + 1)
        while True:
            up = [link for link in self.links if link.up]
            if up:
                return min(up, key=lambda link: len(link.feeds))
            self._up.clear()
            try:
                async with asyncio.timeout(deadline if first else None):
                    await self._up.wait()
            except TimeoutError:
                raise StreamReaderError("no connection to NATS came up") from None

    def order(self, number: int) -> list[str]:
        """The servers connection ``number`` tries, in order: the configured ones shuffled once
        for the pool and turned by ``number`` (the pool's connections start on different
        servers, and different API processes in different orders), then the announced ones."""
        if self._shuffled is None:
            self._shuffled = random.sample(self.servers, len(self.servers))
        turn = number % len(self._shuffled)
        discovered = random.sample(self.discovered, len(self.discovered))
        return [*self._shuffled[turn:], *self._shuffled[:turn], *discovered]

    def came_up(self) -> None:
        self.connects += 1
        self._up.set()

    def learn(self, info: object, via: SplitResult | None) -> None:
        """Keep the servers the cluster announces (``connect_urls``) that are not configured,
        with the scheme and credentials of ``via``, the server that announced them."""
        urls = info.get("connect_urls") if isinstance(info, dict) else None
        if via is None or not isinstance(urls, list) or not urls:
            return
        configured = {_without_credentials(server) for server in self.servers}
        userinfo = via.netloc.rpartition("@")[0]
        self.discovered = [
            f"{via.scheme or 'nats'}://{userinfo + '@' if userinfo else ''}{address}"
            for address in urls
            if isinstance(address, str) and _without_credentials(address) not in configured
        ]

    def delete_later(self, consumer: str) -> None:
        async def delete() -> None:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, consumer)

        task = asyncio.create_task(delete())
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    @property
    def connected(self) -> int:
        return sum(link.up for link in self.links)

    async def close(self) -> None:
        for feed in list(self.feeds):
            await feed.close()
        for link in self.links:
            link.close()
        tasks = [link.task for link in self.links if link.task is not None]
        self.links = []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._deleting:
            await asyncio.gather(*self._deleting, return_exceptions=True)
