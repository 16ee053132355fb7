"""Read a JetStream stream from a sequence on, as fast as the socket delivers it.

nats-py hands every message through a ``Msg`` object, a queue and a task: about 8 µs a message,
and a pull ``fetch`` about 35 µs. That caps the projector and a replay of millions of events long
before Postgres does. Both read each message once, in order, and keep their own checkpoint (in
Postgres), so they need no acknowledgements: this reader speaks the NATS client protocol itself
for one thing only, the messages of one ephemeral push consumer with flow control, parsed
straight from the socket buffer (about 2 µs a message). The consumer is created through nats-py
like any other.

Protocol frames handled (https://docs.nats.io/reference/reference-protocols/nats-protocol):
``INFO``, ``PING`` (answered), ``MSG``/``HMSG`` (data, and the consumer's flow-control requests
and heartbeats, answered), ``-ERR`` (raised). A frame no server sends is refused, raised after
the messages before it: sizes that are not plain digits, headers larger than their message, a
size over what a message can have on any server (``PAYLOAD_BOUND`` says which), a body that
does not end where its size says, a line no server sends, a line that has not ended within
``MAX_LINE`` bytes; so the reader buffers at most one frame and a read.
Authentication: user and password or a token from
the URL, or an NKey (``nats_nkey_seed_file`` or a ``nats_creds_file``); TLS when the URL says
``tls://`` or the server requires it, with the CA and client certificate of the settings
(``NatsConnection``, shared with nats-py). Each connect step (TCP, INFO, TLS handshake, CONNECT)
has a deadline, on the loop's own time (``common.looptime``); a server that misses one is logged
and the next server of the list is tried.
The list is the configured servers, then those the cluster announces (INFO ``connect_urls``, as
nats-py follows them), each with the scheme and credentials of the server that announced it: a
reader configured with one node of a cluster still finds the others when that node is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Mapping
from urllib.parse import SplitResult, urlsplit

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext, api

from jobrunner.common import subscription
from jobrunner.common.looptime import within_loop_time
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.receivedchunks import ReceivedChunks

log = structlog.get_logger()

READ_SIZE = 1 << 20
# What the connection may hold unread: the transport stops reading past twice this.
READ_LIMIT = READ_SIZE * 4
# The usual frame, a stored message with headers and a v1 reply subject (``$JS.ACK.<stream>.
# <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``), matched in one C call:
# a fifth less CPU a message than splitting the line and the subject in Python. Every other frame
# (and a delivery out of order, for its error) goes through the general parser.
# It trusts nats-server's framing: its classes are written so that the regex engine scans them
# in its tight single-character loop (``[^ ]``, ``[^.]``) and never backtracks (``++``), and they
# do not exclude a line end, nor a space in a stream or consumer name, which nats-server never
# sends there; on such a malformed head the fast path may hand out a message the general parser
# would refuse (tests/unit/test_streamreader_parse.py records it). Numbers are digits, but for
# the delivery's time, which neither parser reads: ``[^.]`` scans its 19 digits in the tight
# loop, where ``\d`` looks each up in a category (session 40). 40 % fewer
# instructions a message than the strict ``[^ \r\n]+`` classes (``bench/RESULTS.md``,
# session 37). Groups: ``<stream seq>.<consumer seq>``, header size, size; the subject first in
# the second form. The pending count is cut from the last delivery's head when asked (``pending``).
# Sizes of at most six digits are always under the frame limit (``frame_limit``: over 64 MiB),
# so the fast path needs no size check of its own: a larger message (and a size no
# ``int()`` takes, 4,300 digits and more) goes through the general parser, which checks each.
# The pending count has at most 20 digits (a 64-bit number), so ``pending`` can always make it one.
_HEAD = (
    rb"HMSG [^ ]++ [^ ]++ \$JS\.ACK\.[^.]++\.[^.]++\.\d++\.(\d++\.\d++)\.[^.]++\.\d{1,20}+ "
    rb"(\d{1,6}+) (\d{1,6}+)\r\n"
)
# The same, the subject taken too: for a reader that skips the bodies of some subjects.
_HEAD_WITH_SUBJECT = (
    rb"HMSG ([^ ]++) [^ ]++ \$JS\.ACK\.[^.]++\.[^.]++\.\d++\.(\d++\.\d++)\.[^.]++\.\d{1,20}+ "
    rb"(\d{1,6}+) (\d{1,6}+)\r\n"
)
_DELIVERY = re.compile(_HEAD)
_DELIVERY_WITH_SUBJECT = re.compile(_HEAD_WITH_SUBJECT)
# A run's next delivery, matched where the previous body ends: its CRLF first, so a size that
# does not match its body is caught by the match the run makes anyway (the run's last body's
# CRLF is checked once, after the run).
_NEXT_DELIVERY = re.compile(rb"\r\n" + _HEAD)
_NEXT_DELIVERY_WITH_SUBJECT = re.compile(rb"\r\n" + _HEAD_WITH_SUBJECT)
# Bytes of a read joined with a frame left over from the reads before, beyond what its size says
# it lacks: enough for the head and body of most frames when its head was cut.
_JOINED_AHEAD = 4096
# Header and message sizes as numbers, looked up instead of ``int()`` (a C call with its own
# parsing, several times a dictionary hit): headers are a few dozen bytes, most events a few
# hundred. Larger sizes (and a zero) are converted as before.
_SIZES = {str(n).encode(): n for n in range(1, 4096)}
# A run's sequences, ``[<stream seq>,<consumer seq>,...]``, made numbers in one call.
_SEQUENCES = msgspec.json.Decoder(list[int]).decode
HEARTBEAT_SECONDS = 5.0
DEFAULT_CONNECT_TIMEOUT = 2.0  # as nats-py's
# What the reader may buffer for one frame (invariant 11): no size a server declares makes it
# wait for more bytes than a message can have. The bound caps memory; it does not validate
# sizes: a message stored when ``max_payload`` was larger (before an operator lowered it, or on
# another node of the cluster) is delivered as stored, so the bound is what any server could
# ever have stored, not what this one announces now. nats-server refuses to start with a
# ``max_payload`` over its ``max_pending`` (64 MiB unless configured, and it warns above 8 MiB),
# so the payload is bounded by the larger of 64 MiB and the server's INFO, and a later INFO
# never lowers it. Plus the headers' allowance: JetStream checks headers and payload together
# against the ``max_payload`` of the server that stored them, then may add headers of its own
# (``Nats-Stream-Source`` on a sourced stream) and refuses to store headers over 65,535 bytes
# (nats-server ``stream.go``), so 64 KiB more covers any headers a stored message can come with.
PAYLOAD_BOUND = 64 << 20
HEADERS_ALLOWANCE = 1 << 16
# The longest line the reader waits for the end of: a frame's head or an INFO. nats-server
# refuses a publisher's line over its ``max_control_line`` (4 KiB by default), which bounds a
# subject, and an INFO naming a hundred cluster nodes takes a few KiB: 16 times the default.
MAX_LINE = 1 << 16
# ``max_payload`` is an int32 in nats-server's options: an INFO announcing more is no server's.
_LARGEST_MAX_PAYLOAD = (1 << 31) - 1


class StreamReaderError(Exception):
    """The connection failed or the server reported an error; start again after the last seq."""


class GapError(StreamReaderError):
    """A message of the consumer went missing; start again after the last sequence received."""


class StreamReader:
    """An ephemeral push consumer's messages as batches of ``(stream sequence, payload)``.

    ``pending`` is the number of messages the stream held beyond the last one received, as the
    server counted when it sent it: 0 means the reader has caught up with the stream.
    """

    def __init__(
        self,
        js: JetStreamContext,
        servers: list[str],
        stream: str,
        subjects: str,
        name: str = "jobrunner-streamreader",
        connection: NatsConnection | None = None,
        skip_subject_suffix: bytes | None = None,
    ) -> None:
        """``connection`` gives the deadline of each connect step and TLS, the same options the
        services' nats-py clients use (``NatsConnection.from_settings``). A message whose subject
        ends with ``skip_subject_suffix`` comes with an empty payload: counted in order (its
        sequence, the gap check), its body never copied nor decoded."""
        self._skip = skip_subject_suffix
        self._name = name
        self._timeout = connection.connect_timeout if connection else DEFAULT_CONNECT_TIMEOUT
        self._tls = connection.tls if connection else None
        self._tls_hostname = connection.tls_hostname if connection else None
        self._connection = connection
        self._js = js
        self._servers = servers
        self._discovered: list[str] = []  # announced by the cluster, not configured
        self._stream = stream
        self._subjects = subjects
        self._announced_by: SplitResult | None = None
        # asyncio's until the connection is set up, then its reads as received (``open``).
        self._reader: asyncio.StreamReader | ReceivedChunks | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._consumer: str | None = None
        # What is left of the reads after the last whole frame, in pieces: a frame's body that
        # spans many reads is joined once, when ``_awaited`` bytes have come, not copied at each.
        self._pieces: list[bytes] = []
        self._buffered = 0  # bytes in ``_pieces``
        self._awaited = 0  # bytes ``_pieces`` must hold before the parse can go on
        self._frame_limit = frame_limit({})  # the server's, from its INFO, once connected
        self._consumer_seq = 0
        self._error: StreamReaderError | None = None  # met while parsing, raised next
        self.last_seq = 0  # the last message handed out (or about to be, in a batch)
        # The last delivery's pending count as delivered (digits), or the head it is in when the
        # fast path took it: made a number only when asked, a tenth of a message's parse.
        self._pending: bytes | re.Match[bytes] | None = None

    async def open(self, start_seq: int, request_timeout: float | None = None) -> None:
        """Connect and start delivery at ``start_seq``; an open reader is closed first.
        ``request_timeout``: how long its consumer's create waits for JetStream's answer (None:
        the context's)."""
        await self.close()
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        await self._connect()
        try:
            self._send(f"SUB {inbox} 1\r\n".encode())
            await self._ping()
            # The handshake read lines; from now on whole reads, without asyncio's copies.
            assert isinstance(self._reader, asyncio.StreamReader)
            assert self._writer is not None
            self._reader = await ReceivedChunks.take_over(self._reader, self._writer, READ_LIMIT)
        except (TimeoutError, OSError) as exc:
            await self.close()
            raise StreamReaderError(f"NATS did not answer: {exc!r}") from exc
        try:
            info = await self._js.add_consumer(
                self._stream, self._consumer_config(inbox, start_seq), timeout=request_timeout
            )
        except (nats.errors.Error, TimeoutError) as exc:
            await self.close()
            raise StreamReaderError(f"cannot create the consumer: {exc!r}") from exc
        self._consumer = info.name
        self._consumer_seq = 0
        self.last_seq = start_seq - 1
        self._pending = None

    def _consumer_config(self, inbox: str, start_seq: int) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            deliver_subject=inbox,
            filter_subject=self._subjects,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            flow_control=True,
            idle_heartbeat=HEARTBEAT_SECONDS,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )

    async def batches(self) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Every message from the start sequence on, a socket read's worth at a time."""
        assert isinstance(self._reader, ReceivedChunks)  # since ``open``
        while True:
            if self._error is not None:
                # Raised only now: the messages read before it went out with the last batch.
                error, self._error = self._error, None
                raise error
            try:
                # The consumer sends a heartbeat when idle: silence this long is a dead link.
                # (Not ``wait_for``: on Python 3.11 it swallows a cancel that comes as a read
                # completes, and a reader stopped by cancelling its task then read on for good.)
                # On wall time, not ``common.looptime``'s: a loop blocked past 15 s can take a
                # live link for dead, which only reconnects and reads on from the last sequence
                # read (nothing lost nor repeated); not worth slices on every read.
                async with asyncio.timeout(HEARTBEAT_SECONDS * 3):
                    chunk = await self._reader.read()
                if not chunk:
                    raise StreamReaderError("NATS closed the connection")
                batch = self._parse(chunk)
                if self._writer is not None and self._writer.transport.get_write_buffer_size():
                    await self._writer.drain()
            except TimeoutError:
                raise StreamReaderError("no message nor heartbeat from NATS for 15 s") from None
            except OSError as exc:
                raise StreamReaderError(f"connection to NATS lost: {exc}") from exc
            if batch:
                yield batch

    @property
    def pending(self) -> int | None:
        """What the consumer had left to send after the last delivery handed out."""
        pending = self._pending
        if isinstance(pending, re.Match):
            # A fast-path head: the digits between the reply's last dot and the space before
            # the header size (the next to last group of both patterns).
            digits_end = pending.start(pending.re.groups - 1) - 1
            return int(pending.string[pending.string.rindex(b".", 0, digits_end) + 1 : digits_end])
        return None if pending is None else int(pending)

    @property
    def closed(self) -> bool:
        return self._writer is None

    def abort(self) -> None:
        """Drop the socket and what is still buffered for it (a close waits for a frozen
        server to take it)."""
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self, wait_for_delete: bool = True) -> None:
        """Close the connection and delete the consumer. ``wait_for_delete=False`` (a link
        that failed): the delete goes on in the background (``subscription.delete_consumer_soon``,
        cancelled by ``subscription.forget_deletes`` at a stop). Sent while nats-py's connection
        is down or not yet known to be, its answer never comes and it would hold the caller for
        the whole JetStream request timeout (5 s) before the reader could open again."""
        if self._consumer is not None:
            name, self._consumer = self._consumer, None
            if not wait_for_delete:
                subscription.delete_consumer_soon(self._js, self._stream, name)
            else:
                # Gone already, or NATS is down: it expires by itself after its inactive
                # threshold.
                with contextlib.suppress(Exception):
                    await self._js.delete_consumer(self._stream, name)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None
        self._pieces = []
        self._buffered = self._awaited = 0
        self._error = None
        self._pending = None  # a fast-path head holds its whole read's buffer

    # --- the protocol

    async def _connect(self) -> None:
        """Try each server in turn; each step of each attempt has a deadline, so a server that
        accepts and then says nothing costs at most a few ``connect_timeout`` before the next
        one is tried."""
        errors = []
        for server in [*self._servers, *self._discovered]:
            where = _without_credentials(server)
            try:
                await self._connect_to(server)
                return
            except (TimeoutError, OSError, ValueError, ssl.SSLError, StreamReaderError) as exc:
                reason = _reason(exc)
                log.warning("stream reader cannot connect", server=where, reason=reason)
                errors.append(f"{where}: {reason}")
                self._drop_connection()
            except BaseException:  # the caller cancelled: its connection is not left open
                self._drop_connection()
                raise
        raise StreamReaderError("cannot connect to NATS: " + "; ".join(errors))

    def _drop_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def _connect_to(self, server: str) -> None:
        url = urlsplit(server if "://" in server else f"nats://{server}")
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        timeout = self._timeout
        # Every step on the loop's own time (``common.looptime``): a connection made, an INFO
        # or a TLS reply that came while the loop was blocked by other work (the API's, under
        # uvloop) is not a server that failed.
        try:
            reader, writer = await _open_connection(host, port, timeout)
        except TimeoutError:
            raise StreamReaderError(f"no TCP connection within {timeout:g} s") from None
        self._reader, self._writer = reader, writer
        try:
            first = await within_loop_time(self._line(), timeout)
        except TimeoutError:
            raise StreamReaderError(f"no INFO from the server within {timeout:g} s") from None
        if not first.startswith(b"INFO "):
            raise StreamReaderError(f"not a NATS server: it began with {first[:40]!r}")
        info = json.loads(first.removeprefix(b"INFO "))
        if not isinstance(info, dict):
            raise StreamReaderError(f"not a NATS server: its INFO is {first[:40]!r}")
        try:
            self._frame_limit = frame_limit(info)
        except ValueError as exc:
            raise StreamReaderError(f"not a NATS server: {exc}") from None
        self._learn(info, url)
        self._announced_by = url
        if url.scheme == "tls" or info.get("tls_required"):
            context = self._tls or ssl.create_default_context()
            try:
                # Given up, the handshake is cancelled and closes its transport; ``_connect``
                # closes the socket under it, also when the caller is cancelled (the handshake
                # done or not: the writer holds the TLS transport once it is).
                await within_loop_time(
                    writer.start_tls(context, server_hostname=self._tls_hostname or host),
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
            "version": "jobrunner-streamreader",
            "name": self._name,
        }
        # Taken as written, not percent-decoded: exactly what nats-py sends for the same URL.
        if url.username and url.password is not None:
            connect |= {"user": url.username, "pass": url.password}
        elif url.username:
            connect["auth_token"] = url.username
        if self._connection is not None and self._connection.signs:
            nonce = info.get("nonce")
            if not isinstance(nonce, str):
                raise StreamReaderError("the server sent no nonce to sign with the NKey")
            try:
                connect |= self._connection.signed_identity(nonce)
            except Exception as exc:  # the seed or creds file changed since the start
                raise StreamReaderError(f"cannot sign in with the NKey: {exc!r}") from None
        self._send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        try:
            await self._ping()
        except TimeoutError:
            raise StreamReaderError(
                f"no answer to CONNECT from the server within {timeout:g} s"
            ) from None

    def _learn(self, info: object, via: SplitResult | None) -> None:
        """Keep the servers the cluster announces (``connect_urls``) that are not configured,
        with the scheme and credentials of ``via``, the server that announced them."""
        urls = info.get("connect_urls") if isinstance(info, dict) else None
        if via is None or not isinstance(urls, list) or not urls:
            return
        configured = {_without_credentials(server) for server in self._servers}
        userinfo = via.netloc.rpartition("@")[0]
        self._discovered = [
            f"{via.scheme or 'nats'}://{userinfo + '@' if userinfo else ''}{address}"
            for address in urls
            if isinstance(address, str) and _without_credentials(address) not in configured
        ]

    async def _ping(self) -> None:
        """Round trip to the server: everything sent before is accepted (or an error raised)."""
        self._send(b"PING\r\n")
        assert self._writer is not None
        await self._writer.drain()
        while True:
            line = await within_loop_time(self._line(), self._timeout)  # as INFO's
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise StreamReaderError(line.decode(errors="replace"))
            if line == b"PING":
                self._send(b"PONG\r\n")

    async def _line(self) -> bytes:
        assert isinstance(self._reader, asyncio.StreamReader)  # during the connect
        try:
            line = await self._reader.readline()
        except ValueError:  # its end not seen within the socket reader's limit (4 MiB)
            raise StreamReaderError(
                f"malformed frame from NATS: a line over {MAX_LINE} bytes"
            ) from None
        if not line:
            raise StreamReaderError("NATS closed the connection")
        if len(line) > MAX_LINE + 2:
            raise StreamReaderError(
                f"malformed frame from NATS: a line over {MAX_LINE} bytes, {line[:80]!r}..."
            )
        return line.rstrip(b"\r\n")

    def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def _parse(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """The data messages in what has been read so far. An error met after some of them is
        kept for ``batches`` to raise after handing those out, so none is lost on a restart."""
        out: list[tuple[int, bytes]] = []
        try:
            self._parse_into(out, chunk)
        except StreamReaderError as exc:
            if not out:
                raise
            self._error = exc
        return out

    def _parse_into(self, out: list[tuple[int, bytes]], chunk: bytes) -> None:
        pieces = self._pieces
        buf, pos = chunk, 0
        if pieces:
            held = self._buffered
            pieces.append(chunk)
            self._buffered += len(chunk)
            if self._buffered < self._awaited:
                return  # a frame's body still coming: joined once whole
            # The frame left over joined with the start of this read that ends it (a little
            # more when its size was not known yet), not with the whole read: the rest of the
            # read is parsed where it is, not copied once more.
            before = pieces[:-1]
            pieces.clear()
            ending = b"".join([*before, chunk[: self._awaited - held + _JOINED_AHEAD]])
            end, _ = self._frames(out, ending, 0)
            if end >= held:
                pos = end - held
            else:  # still not whole in what was joined: all of it, as it comes
                buf = b"".join([*before, chunk])
        end, awaited = self._frames(out, buf, pos)
        if end < len(buf):
            rest = buf[end:]
            pieces.append(rest)
            self._buffered = len(rest)
            self._awaited = awaited or len(rest) + 1

    def _frames(self, out: list[tuple[int, bytes]], buf: bytes, pos: int) -> tuple[int, int]:
        """The whole frames of ``buf`` from ``pos`` on (data messages into ``out``): where the
        first frame not all in ``buf`` starts, and how many bytes from there make it whole (0:
        not known yet, its head is cut)."""
        awaited = 0
        append = out.append
        # A run failed its check: the rest of this read goes frame by frame, deliberately. Were
        # the fast path tried again after each frame, a run out of order near its end would be
        # matched again from each of its deliveries in turn (quadratic in the read's size); a
        # failed run means a gap or digits nats-server does not send, so it is rare, and the
        # next read starts fast again.
        careful = False
        while True:
            if not careful:
                taken = self._take_run(out, buf, pos)
                careful = taken is None
                pos = pos if taken is None else taken
            # A line's end is looked for within MAX_LINE bytes only: a line without one is
            # refused once that many have come, not buffered for ever (nor searched again at
            # each read). The same whatever the reads' cuts: a longer line is refused whole too.
            end = buf.find(b"\r\n", pos, pos + MAX_LINE + 2)
            if end < 0:
                if len(buf) - pos >= MAX_LINE + 2:
                    raise StreamReaderError(
                        f"malformed frame from NATS: a line over {MAX_LINE} bytes, "
                        f"{buf[pos : pos + 80]!r}..."
                    )
                break
            head = buf[pos:end]
            if head.startswith(b"HMSG ") or head.startswith(b"MSG "):
                # MSG <subject> <sid> [reply] <size>; HMSG ... [reply] <header size> <size>
                parts = head.split(b" ")
                headed = parts[0] == b"HMSG"
                fields = 5 if headed else 4
                # Sizes are plain ASCII digits: a negative one would send the parse back to this
                # line for ever, and int() would take " 5", "+5" or "1_0". No field is empty.
                if not (
                    fields <= len(parts) <= fields + 1
                    and b"" not in parts
                    and parts[-1].isdigit()
                    and (not headed or parts[-2].isdigit())
                ):
                    raise StreamReaderError(f"malformed frame from NATS: {head[:80]!r}")
                total, header_size = self._frame_sizes(
                    head, parts[-1], parts[-2] if headed else b"0"
                )
                body = end + 2
                if body + total + 2 > len(buf):
                    awaited = body + total + 2 - pos
                    break  # the rest of this message is in the next reads
                if buf[body + total : body + total + 2] != b"\r\n":
                    raise StreamReaderError(
                        f"malformed frame from NATS: a body that does not end where its size "
                        f"says, {head[:80]!r}"
                    )
                with_reply = len(parts) == fields + 1
                reply = parts[3] if with_reply else b""
                if reply.startswith(b"$JS.ACK."):  # a stored message, even with an empty body
                    seq = self._sequence(reply)
                    if self._skip is not None and parts[1].endswith(self._skip):
                        append((seq, b""))
                    else:
                        append((seq, buf[body + header_size : body + total]))
                else:  # a flow-control request or a heartbeat
                    self._control(reply, buf[body : body + header_size])
                pos = body + total + 2
            elif head == b"PING":
                self._send(b"PONG\r\n")
                pos = end + 2
            elif head.startswith(b"-ERR"):
                raise StreamReaderError(head.decode(errors="replace"))
            elif head.startswith(b"INFO "):  # the cluster changed: nodes joined or left
                self._learn_later(head)
                pos = end + 2
            elif head == b"PONG" or head == b"+OK":
                pos = end + 2
            else:
                raise StreamReaderError(f"malformed frame from NATS: {head[:80]!r}")
        return pos, awaited

    def _learn_later(self, head: bytes) -> None:
        """An INFO after the connect: the cluster's nodes, and a ``max_payload`` that may have
        been raised by a reload (a lowered one leaves the limit: messages stored before are
        still delivered as stored)."""
        try:
            info = json.loads(head[5:])
        except ValueError:
            log.warning("stream reader ignores an INFO that is not JSON", info=head[:80])
            return
        self._learn(info, self._announced_by)
        if isinstance(info, dict) and "max_payload" in info:
            try:
                self._frame_limit = max(self._frame_limit, frame_limit(info))
            except ValueError as exc:
                # At connect such a server is refused before anything is read from it; now
                # its messages are being read under the limit it announced then, which still
                # holds: refusing would only stop a replay on a server that works.
                log.warning("stream reader keeps its frame limit", reason=str(exc))

    def _frame_sizes(self, head: bytes, size: bytes, header_size: bytes) -> tuple[int, int]:
        """A frame's size and its headers' (digits), checked before its body is waited for."""
        # Ten digits hold the largest limit; more would be refused below, and int() refuses
        # 4,300 digits and more with a ValueError.
        total = int(size) if len(size) <= 10 else self._frame_limit + 1
        if total > self._frame_limit:
            raise StreamReaderError(
                f"malformed frame from NATS: a size over the {self._frame_limit} bytes a "
                f"message can have on this server, {head[:80]!r}"
            )
        headers = int(header_size) if len(header_size) <= 10 else total + 1
        if headers > total:
            raise StreamReaderError(
                f"malformed frame from NATS: headers larger than the whole message, {head[:80]!r}"
            )
        return total, headers

    def _take_run(self, out: list[tuple[int, bytes]], buf: bytes, pos: int) -> int | None:
        """The usual deliveries from ``pos`` on, one after the other, into ``out``; returns
        where they end. Their sequences become numbers, and their order is checked, once for the
        whole run (two ``int()`` a message cost a sixth of the parse): None, nothing taken, when
        one is out of order, not plain digits, has headers larger than itself or a body that
        does not end where its size says, for the general parser to find which."""
        sizes = _SIZES
        size = len(buf)
        sequences: list[bytes] = []
        bodies: list[bytes] = []
        add_sequence, add_body = sequences.append, bodies.append
        last = None  # the last delivery taken
        end = pos  # where the last body taken ends
        skip = self._skip
        # One loop for each kind of reader: a test of ``skip`` for each message cost more than
        # the rest of the loop's Python (session 38, callgrind counts of the parse).
        if skip is None:
            found = _DELIVERY.match(buf, pos)
            following = _NEXT_DELIVERY.match
            while found is not None:
                both, header_size, total = found.groups()
                body = found.end()
                after = body + (sizes.get(total) or int(total))
                if after + 2 > size:
                    break  # the rest is in the next read
                # Checked for each message: once a run instead (an empty slice counted in
                # ``bodies``) cost about as much, more when reads are small.
                start = body + (sizes.get(header_size) or int(header_size))
                if start > after:
                    return None  # headers larger than the message
                last = found
                add_sequence(both)
                add_body(buf[start:after])
                end = after
                found = following(buf, after)
        else:
            found = _DELIVERY_WITH_SUBJECT.match(buf, pos)
            following = _NEXT_DELIVERY_WITH_SUBJECT.match
            while found is not None:
                subject, both, header_size, total = found.groups()
                body = found.end()
                after = body + (sizes.get(total) or int(total))
                if after + 2 > size:
                    break
                start = body + (sizes.get(header_size) or int(header_size))
                if start > after:
                    return None
                last = found
                add_sequence(both)
                add_body(b"" if subject.endswith(skip) else buf[start:after])
                end = after
                found = following(buf, after)
        if last is None:
            return pos
        if buf[end : end + 2] != b"\r\n":  # the last body's end (the others' were matched)
            return None
        try:  # JSON refuses leading zeros: such digits go the general way, int() takes them
            numbers = _SEQUENCES(b"[" + b",".join(sequences).replace(b".", b",") + b"]")
        except msgspec.DecodeError:
            return None
        first = self._consumer_seq + 1
        if numbers[1::2] != list(range(first, first + len(bodies))):
            return None
        out += zip(numbers[0::2], bodies, strict=True)
        self._consumer_seq = first + len(bodies) - 1
        self.last_seq = out[-1][0]
        # Only the last delivery's pending count tells what is left: its head is kept and the
        # count cut from it when asked (``pending``), not taken as a group from each delivery
        # (a bytes object made and freed a message). It holds this read's buffer until the next
        # delivery: one read's worth, and the projector's reader never asks.
        self._pending = last
        return end + 2

    def _sequence(self, reply: bytes) -> int:
        """The stream sequence, from the ``$JS.ACK...`` reply subject; checks for gaps."""
        tokens = reply.split(b".")
        base = 2 if len(tokens) == 9 else 4  # v1: $JS.ACK.<stream>..., v2 adds domain, account
        try:
            seq = int(tokens[base + 3])
            consumer_seq = int(tokens[base + 4])
            pending = tokens[base + 6]
            int(pending)  # digits, or no delivery
        except (IndexError, ValueError):
            raise StreamReaderError(f"not a JetStream delivery: {reply!r}") from None
        if consumer_seq != self._consumer_seq + 1:
            raise GapError(f"expected delivery {self._consumer_seq + 1}, got {consumer_seq}")
        self._pending = pending  # only a delivery handed out tells what is left
        self._consumer_seq = consumer_seq
        self.last_seq = seq
        return seq

    def _control(self, reply: bytes, headers: bytes) -> None:
        if reply:  # a flow-control request: answering it lets the server send more
            self._send(b"PUB " + reply + b" 0\r\n\r\n")
            return
        # A heartbeat; one that says the consumer stalled names the subject to answer on. Each
        # also names the last delivery the consumer sent: if that one never arrived (say, the
        # last message before the stream went quiet), the gap is noticed now, not when the next
        # event happens to arrive.
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"nats-consumer-stalled" and value:
                self._send(b"PUB " + value + b" 0\r\n\r\n")
            elif (
                name == b"nats-last-consumer"
                and value.isdigit()
                and len(value) <= 20  # a 64-bit count; int() refuses 4,300 digits and more
                and int(value) > self._consumer_seq
            ):
                raise GapError(
                    f"the consumer sent delivery {int(value)}, the last received is "
                    f"{self._consumer_seq}"
                )


async def _open_connection(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection within ``timeout`` of the loop's own time, else ``TimeoutError``.
    Given up while under way, the connect is cancelled, which closes its socket; given up or
    cancelled as it completes (its answer already in, not yet taken), the connection is closed
    here (counted in tests/test_streamreader_connect_gives_up.py and
    tests/test_streamreader_connect_cancelled.py, on both loops)."""
    opening = asyncio.ensure_future(asyncio.open_connection(host, port, limit=READ_LIMIT))
    try:
        return await within_loop_time(opening, timeout)
    except BaseException:
        opening.add_done_callback(_close_if_opened)  # at once when it has completed already
        raise


def _close_if_opened(
    opening: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[1].close()


def _without_credentials(server: str) -> str:
    """``host:port`` of a server URL, for logs and errors: never its user, password or token."""
    url = urlsplit(server if "://" in server else f"nats://{server}")
    try:
        port = url.port or 4222
    except ValueError:  # refused at start (NatsConnection); kept readable all the same
        return url.hostname or "?"
    return f"{url.hostname or '127.0.0.1'}:{port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def frame_limit(info: Mapping[str, object]) -> int:
    """The largest size a frame from the server of this INFO may declare (``PAYLOAD_BOUND``
    says why); ValueError when its ``max_payload`` is not a size a NATS server announces."""
    announced = info.get("max_payload", PAYLOAD_BOUND)
    if type(announced) is not int or not 0 < announced <= _LARGEST_MAX_PAYLOAD:
        raise ValueError(f"it announced a max_payload of {announced!r}")
    return max(announced, PAYLOAD_BOUND) + HEADERS_ALLOWANCE
