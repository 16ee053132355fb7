"""The API's HTTP/1.1 protocol (httpprotocol.py) on a real uvicorn, serving an app that reads the
whole body and says how much it got: requests the parser refuses are JSON errors, a request's
head is bounded at MAX_REQUEST_HEAD_BYTES, and what is legal HTTP is never taken for too much
(pipelined requests, a body of many small chunks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import structlog.testing

from jobrunner.common.settings import Settings
from jobrunner.services.api.httpprotocol import (
    MAX_REQUEST_HEAD_BYTES,
    ApiHttpProtocol,
    protocol_for,
)
from tests.tools.raw_http import (
    RawAnswer,
    open_raw,
    parse_answer,
    raw_exchange,
    read_until_closed,
    status_lines,
)
from tests.tools.uvicorn_serving import serving


async def body_counter(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, answers how many bytes and headers it got."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"body_bytes": size, "headers": len(scope["headers"])}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with serving(body_counter, http=ApiHttpProtocol) as url:
        yield url


def get_with_header(value: bytes, path: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Pad: %s\r\n\r\n" % (
        path,
        value,
    )


def padded_to(head_bytes: int) -> bytes:
    """A GET whose request line and headers are ``head_bytes`` bytes as sent."""
    bare = get_with_header(b"")
    return get_with_header(b"a" * (head_bytes - len(bare)))


async def test_an_unparsable_header_is_a_json_400_naming_the_parsers_reason(
    base_url: str,
) -> None:
    """A control byte in a header value: 400 MALFORMED_REQUEST in JSON, the parser's reason in
    its sentence, the connection closed (uvicorn's own answer was plain text)."""
    answer = await raw_exchange(base_url, get_with_header(b"a\x01b"))
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    error = answer.json()["error"]
    assert error["code"] == "MALFORMED_REQUEST"
    assert "invalid header value char" in error["message"]


@pytest.mark.parametrize("pieces", [1, 7, 600])
async def test_a_head_at_the_limit_is_served_and_one_byte_more_is_refused(
    base_url: str, pieces: int
) -> None:
    """A request line and headers of MAX_REQUEST_HEAD_BYTES pass; one byte more is 431
    REQUEST_HEAD_TOO_LARGE naming the limit, however the bytes are split into writes."""
    served = await raw_exchange(base_url, padded_to(MAX_REQUEST_HEAD_BYTES), pieces=pieces)
    assert served.status == 200, served
    refused = await raw_exchange(base_url, padded_to(MAX_REQUEST_HEAD_BYTES + 1), pieces=pieces)
    assert refused.status == 431
    assert refused.headers["content-type"] == "application/json"
    error = refused.json()["error"]
    assert error["code"] == "REQUEST_HEAD_TOO_LARGE"
    assert error["limit"] == MAX_REQUEST_HEAD_BYTES
    assert str(MAX_REQUEST_HEAD_BYTES) in error["message"]


async def test_many_headers_past_the_limit_are_refused(base_url: str) -> None:
    """The limit is on the bytes, not on one header: many small headers past it are 431."""
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_REQUEST_HEAD_BYTES // 8))
    answer = await raw_exchange(base_url, b"GET / HTTP/1.1\r\nHost: t\r\n%s\r\n" % headers)
    assert answer.status == 431


async def test_pipelined_requests_are_not_taken_for_one_long_head(base_url: str) -> None:
    """Requests sent back to back in one write, together far over the limit, are each served."""
    one = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: %s\r\n\r\n" % (b"p" * 200)
    count = 3 * MAX_REQUEST_HEAD_BYTES // len(one)
    last = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    reader, writer = await open_raw(base_url)
    try:
        writer.write(one * count + last)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(-1), 60)
    finally:
        writer.close()
    assert received.count(b"HTTP/1.1 200 OK") == count + 1
    assert b" 431 " not in received


async def test_a_body_of_many_small_chunks_is_served(base_url: str) -> None:
    """A chunked body's size lines are not a head: a body of many tiny chunks (their framing
    far over the limit) is read whole."""
    chunks = b"3\r\nabc\r\n" * (MAX_REQUEST_HEAD_BYTES // 2)
    request = (
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%s0\r\n\r\n" % chunks
    )
    for pieces in (1, 50):
        answer = await raw_exchange(base_url, request, pieces=pieces)
        assert answer.status == 200
        assert answer.json()["body_bytes"] == 3 * (MAX_REQUEST_HEAD_BYTES // 2)


async def test_trailers_far_past_the_limit_are_refused(base_url: str) -> None:
    """A chunked body's trailers are bounded as its head is (counted from the read after the
    body's last data, so not to the byte): far past the limit, 431."""
    trailer = b"X-Trailer: %s\r\n" % (b"t" * (3 * MAX_REQUEST_HEAD_BYTES))
    request = (
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n%s\r\n" % trailer
    )
    answer = await raw_exchange(base_url, request, pieces=20)
    assert answer.status == 431
    assert answer.json()["error"]["code"] == "REQUEST_HEAD_TOO_LARGE"


async def test_an_endless_header_is_refused_while_it_is_still_being_sent(base_url: str) -> None:
    """A client that never ends its header (100 MB, in 16 KiB writes) gets its 431 and the
    connection closed long before it has sent it all: the server stopped reading it."""
    reader, writer = await open_raw(base_url)
    answered = asyncio.create_task(read_until_closed(reader))
    sent = 0
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ")
    try:
        async with asyncio.timeout(60):
            while sent < 100 * 1024 * 1024 and not answered.done():
                writer.write(b"e" * 16384)
                await writer.drain()
                sent += 16384
    except ConnectionError:
        pass  # the server closed the connection with the rest unread: a reset
    finally:
        received = await asyncio.wait_for(answered, 30)
        writer.close()
    answer = parse_answer(received)
    assert answer.status == 431
    assert sent < 100 * 1024 * 1024


async def answers_before_reading(scope: Any, receive: Any, send: Any) -> None:
    """Starts its answer at once, then reads the body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"started", "more_body": True})
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.body", "body": b" and read"})


async def test_a_body_refused_after_the_answer_began_only_ends_the_connection() -> None:
    """A body the parser refuses once the route's answer has begun: the connection is closed
    without a second status line inside the answer (the client sees it cut short)."""
    async with serving(answers_before_reading, http=ApiHttpProtocol) as url:
        reader, writer = await open_raw(url)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            received = await asyncio.wait_for(reader.readuntil(b"started\r\n"), 30)
            writer.write(b"zz\r\n")  # no chunk size
            received += await asyncio.wait_for(read_until_closed(reader), 30)
        finally:
            writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert status_lines(received) == 1, received
    assert b"and read" not in received


class HeldRoute:
    """An app that reads the whole body, then answers its path only once released: a route
    still running when the client sends its next request."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.ran: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.ran.append(scope["path"])
        self.arrived.set()
        await self.released.wait()
        body = json.dumps({"path": scope["path"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def reporting_reads(expected: int) -> tuple[type[ApiHttpProtocol], asyncio.Event]:
    """ApiHttpProtocol, and an event it sets once its connections have been handed ``expected``
    bytes (parsed or dropped unread): a test waits for the server to have read what it sent."""
    read_all = asyncio.Event()

    class ReportingReads(ApiHttpProtocol):
        bytes_handed = 0

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            ReportingReads.bytes_handed += len(data)
            if ReportingReads.bytes_handed >= expected:
                read_all.set()

    return ReportingReads, read_all


async def answers_to_a_request_and_what_follows_it(
    first: bytes, then: bytes
) -> tuple[bytes, list[str]]:
    """Sends ``first``, and once its route runs (held) ``then`` on the same connection; what
    came back until the server closed the connection, and the paths whose route ran."""
    route = HeldRoute()
    protocol, read_all = reporting_reads(len(first) + len(then))
    async with serving(route, http=protocol) as url:
        reader, writer = await open_raw(url)
        try:
            writer.write(first)
            await asyncio.wait_for(route.arrived.wait(), 30)
            writer.write(then)
            await asyncio.wait_for(read_all.wait(), 30)
            route.released.set()
            received = await asyncio.wait_for(read_until_closed(reader), 30)
        finally:
            writer.close()
    return received, route.ran


FIRST = b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_malformed_request_behind_a_running_route_leaves_its_answer_whole() -> None:
    """A bad request sent while the route of the one before it runs: that route's answer comes
    whole, then the connection closes; the bad request is unanswered (never "nothing was
    done" for a request that was done), for the client to send again."""
    received, ran = await answers_to_a_request_and_what_follows_it(
        FIRST, b"GET /second HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n"
    )
    answer = parse_answer(received)
    assert answer.status == 200
    assert answer.json() == {"path": "/first"}
    assert answer.headers["connection"] == "close"
    assert status_lines(received) == 1, received
    assert ran == ["/first"]


async def test_a_head_too_large_behind_a_running_route_leaves_its_answer_whole() -> None:
    """Likewise a head past the limit sent while the route before it runs: no 431 in place of
    that route's answer."""
    endless = b"GET /second HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * (2 * MAX_REQUEST_HEAD_BYTES)
    received, ran = await answers_to_a_request_and_what_follows_it(FIRST, endless)
    answer = parse_answer(received)
    assert answer.status == 200
    assert answer.json() == {"path": "/first"}
    assert status_lines(received) == 1, received
    assert ran == ["/first"]


async def test_a_pipelined_request_with_a_bad_body_is_refused_in_its_turn() -> None:
    """A request whose chunked body is malformed, pipelined behind one whose route runs: the
    first is answered, then the second its 400 MALFORMED_REQUEST, its route never run."""
    bad_body = b"POST /second HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
    route = HeldRoute()
    protocol, read_all = reporting_reads(len(FIRST + bad_body))
    async with serving(route, http=protocol) as url:
        reader, writer = await open_raw(url)
        try:
            writer.write(FIRST + bad_body)
            await asyncio.wait_for(route.arrived.wait(), 30)
            await asyncio.wait_for(read_all.wait(), 30)
            route.released.set()
            received = await asyncio.wait_for(read_until_closed(reader), 30)
        finally:
            writer.close()
    assert status_lines(received) == 2, received
    second_start = received.index(b"\r\nHTTP/1.1 ") + 2
    first = parse_answer(received[:second_start])
    second = parse_answer(received[second_start:])
    assert (first.status, first.json()) == (200, {"path": "/first"})
    assert second.status == 400
    assert second.headers["content-type"] == "application/json"
    assert second.headers["connection"] == "close"
    assert second.json()["error"]["code"] == "MALFORMED_REQUEST"
    assert route.ran == ["/first"]


async def test_bytes_after_a_request_that_closes_the_connection_are_not_read() -> None:
    """A request with ``Connection: close`` followed, while its route runs, by more bytes (300
    KB, far past the head limit): it is answered; what follows it is no request and is not
    read (no 431)."""
    received, ran = await answers_to_a_request_and_what_follows_it(
        FIRST.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n"), b"x" * 300_000
    )
    answer = parse_answer(received)
    assert answer.status == 200, answer
    assert answer.json() == {"path": "/first"}
    assert ran == ["/first"]


async def test_a_request_line_past_the_limit_is_refused(base_url: str) -> None:
    """The request line counts toward the limit: a 100 KiB target is 431, its sentence naming
    the request line."""
    answer = await raw_exchange(base_url, b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"a" * 102400))
    assert answer.status == 431
    error = answer.json()["error"]
    assert error["code"] == "REQUEST_HEAD_TOO_LARGE"
    assert "request line" in error["message"]


def head_timeout_of(seconds: float) -> type[ApiHttpProtocol]:
    return protocol_for(msgspec.structs.replace(Settings(), request_head_timeout_seconds=seconds))


async def send_head_slowly(url: str, pause: float, pieces: int = 2) -> RawAnswer:
    """A request whose head is sent in ``pieces`` writes ``pause`` seconds apart, until the
    server has answered and closed the connection."""
    head = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: %s\r\n\r\n" % (b"p" * 50)
    size = -(-len(head) // pieces)
    reader, writer = await open_raw(url)
    answered = asyncio.create_task(read_until_closed(reader))
    try:
        for start in range(0, len(head), size):
            if start:
                await asyncio.sleep(pause)
            if answered.done():
                break
            writer.write(head[start : start + size])
            await writer.drain()
        received = await asyncio.wait_for(answered, 30)
    finally:
        writer.close()
    return parse_answer(received)


async def test_a_head_finished_just_within_its_deadline_is_served() -> None:
    """A head whose last byte comes 0.7 of the deadline after its first: served."""
    async with serving(body_counter, http=head_timeout_of(1.0)) as url:
        answer = await send_head_slowly(url, pause=0.7)
    assert answer.status == 200, answer


async def test_a_head_not_finished_by_its_deadline_is_a_json_408() -> None:
    """A head not whole 1.5 times the deadline after its first byte: 408 REQUEST_HEAD_TIMEOUT
    in JSON, the connection closed; the deadline runs from the head's first byte, so a client
    trickling it (a piece every 0.1 s, each well within the deadline) gets it too."""
    async with serving(body_counter, http=head_timeout_of(1.0)) as url:
        for pause, pieces in ((1.5, 2), (0.1, 40)):
            answer = await send_head_slowly(url, pause=pause, pieces=pieces)
            assert answer.status == 408, (pause, answer)
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["connection"] == "close"
            error = answer.json()["error"]
            assert error["code"] == "REQUEST_HEAD_TIMEOUT"
            assert error["limit_seconds"] == 1.0


async def head_sent_after_a_held_answer(held: float, then_after: float) -> tuple[bytes, list[str]]:
    """With a 1 s head deadline: a POST and the first 10 bytes of a GET, the POST's route held
    ``held`` seconds, the rest of the GET sent ``then_after`` seconds after the POST's answer.
    What came back after that answer until the server closed, and the paths whose route ran."""
    route = HeldRoute()
    second = b"GET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    async with serving(route, http=head_timeout_of(1.0)) as url:
        reader, writer = await open_raw(url)
        try:
            writer.write(FIRST + second[:10])
            await asyncio.wait_for(route.arrived.wait(), 30)
            await asyncio.sleep(held)
            route.released.set()
            await asyncio.wait_for(reader.readuntil(b'"/first"}\r\n0\r\n\r\n'), 30)
            await asyncio.sleep(then_after)
            writer.write(second[10:])
            received = await asyncio.wait_for(read_until_closed(reader), 30)
        finally:
            writer.close()
    return received, route.ran


async def test_a_head_waiting_behind_a_running_route_gets_its_whole_deadline_after() -> None:
    """A client that sends part of its next request while the route of the one before runs
    past the head deadline (1.9 s of 1 s), and the rest 0.2 s after the answer: served (the
    deadline is not counted during the earlier answer and starts whole when it ends, whatever
    the phase of its timer)."""
    received, ran = await head_sent_after_a_held_answer(held=1.9, then_after=0.2)
    assert parse_answer(received).json() == {"path": "/second"}
    assert ran == ["/first", "/second"]


async def test_a_head_waiting_behind_an_answer_is_timed_out_a_deadline_after_it() -> None:
    """The same head's rest sent 1.5 s (of a 1 s deadline) after the answer before it: 408
    REQUEST_HEAD_TIMEOUT, its route never run."""
    received, ran = await head_sent_after_a_held_answer(held=0.1, then_after=1.5)
    answer = parse_answer(received)
    assert answer.status == 408, answer
    assert answer.json()["error"]["code"] == "REQUEST_HEAD_TIMEOUT"
    assert ran == ["/first"]


async def test_a_connection_sending_its_first_byte_within_the_deadline_is_served() -> None:
    """A new connection silent for 0.7 of the head deadline, then sending a request: served."""
    async with serving(body_counter, http=head_timeout_of(1.0)) as url:
        reader, writer = await open_raw(url)
        try:
            await asyncio.sleep(0.7)
            writer.write(get_with_header(b"p"))
            received = await asyncio.wait_for(read_until_closed(reader), 30)
        finally:
            writer.close()
    assert parse_answer(received).status == 200


async def test_a_connection_sending_nothing_is_closed_after_the_deadline() -> None:
    """A new connection that sends nothing (a slowloris holding sockets without a byte; uvicorn
    kept it open for ever): closed by the server after the head deadline, without an answer
    (there is no request to answer)."""
    async with serving(body_counter, http=head_timeout_of(1.0)) as url:
        reader, writer = await open_raw(url)
        try:
            assert await asyncio.wait_for(reader.read(1), 10) == b""
        finally:
            writer.close()


async def test_malformed_requests_in_a_loop_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twenty malformed requests in a row: at most one log line of the API's (with its
    reason), and none of uvicorn's plain "Invalid HTTP request received." (one per request)."""
    # uvicorn's records reach the root logger (caplog), as `jobrunner api` has them.
    with structlog.testing.capture_logs() as logs:
        async with serving(body_counter, http=ApiHttpProtocol, log_config=None) as url:
            for _ in range(20):
                answer = await raw_exchange(url, get_with_header(b"a\x01b"))
                assert answer.status == 400
    refused = [line for line in logs if line["event"] == "malformed request refused"]
    assert len(refused) <= 1, refused
    assert all(line["reason"] == "invalid header value char" for line in refused)
    assert "Invalid HTTP request received." not in caplog.text
