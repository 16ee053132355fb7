"""A request the HTTP parser refuses before any route sees it (a control byte in a header, a
malformed request line, bad body framing) is answered as every other error of the API: JSON
with a code and a sentence, ``400 MALFORMED_REQUEST``; a head too large is ``431
REQUEST_HEAD_TOO_LARGE``. The connection is closed, and the API serves the next request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import strategies as st

from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.api.httpprotocol import MAX_REQUEST_HEAD_BYTES
from tests.system import System
from tests.tools.drawn_examples import examples
from tests.tools.raw_http import (
    RawAnswer,
    open_raw,
    parse_answer,
    raw_exchange,
    read_until_closed,
    status_lines,
)
from tests.tools.runners import RUNNER_TYPES, status_events, wait_status
from tests.tools.service_processes import ServiceProcess, wait_api_healthy

# Short, for the tests of the head's deadline (the default is 20 s).
HEAD_TIMEOUT = 2.0
JSON = {"Content-Type": "application/json"}
JOB = json.dumps({"job_type": "emit", "parameters": {"lines": 1}}).encode()


def post_job(*headers: bytes, body: bytes = JOB, framing: bytes | None = None) -> bytes:
    """A job request of the admin's (``<token>`` stands for its token), ``headers`` added;
    ``framing`` instead of the Content-Length header and the body."""
    if framing is None:
        framing = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    lines = [
        b"POST /api/jobs HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Authorization: Bearer <token>",
        b"Content-Type: application/json",
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n" + framing


def get_jobs(*headers: bytes, request_line: bytes = b"GET /api/jobs?limit=1 HTTP/1.1") -> bytes:
    lines = [request_line, b"Host: 127.0.0.1", b"Authorization: Bearer <token>", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# Each kind of request the parser refuses, with what its reason says (in the sentence).
MALFORMED = {
    "a control byte in the Idempotency-Key": (
        post_job(b"Idempotency-Key: a\x01b"),
        "invalid header value char",
    ),
    "NUL in the Authorization header": (
        get_jobs().replace(b"Bearer <token>", b"Bearer <token>\x00"),
        "invalid header value char",
    ),
    "DEL in a header value": (get_jobs(b"Accept: a\x7fb"), "invalid header value char"),
    "a lone CR in a header value": (
        get_jobs(b"Accept: a\rb"),
        "missing expected lf after header value",
    ),
    "a space before a header's colon": (get_jobs(b"Accept : */*"), "invalid header token"),
    "a header name with a bracket": (get_jobs(b"Acc(ept: */*"), "invalid header token"),
    "an empty header name": (get_jobs(b": value"), "invalid header token"),
    "a folded header line": (get_jobs(b"Accept: a\r\n  b"), "unexpected whitespace"),
    "an unknown method": (
        get_jobs(request_line=b"FETCH /api/jobs HTTP/1.1"),
        "invalid method encountered",
    ),
    "a space in the request target": (
        get_jobs(request_line=b"GET /api/jobs x HTTP/1.1"),
        "expected http/",
    ),
    "a control byte in the request target": (
        get_jobs(request_line=b"GET /api/jobs\x01 HTTP/1.1"),
        "invalid char in url path",
    ),
    "a byte over 0x7f in the request target": (
        get_jobs(request_line=b"GET /api/jobs/\xc3\xa9 HTTP/1.1"),
        "invalid char in url path",
    ),
    "an HTTP version that does not exist": (
        get_jobs(request_line=b"GET /api/jobs HTTP/3.7"),
        "invalid http version",
    ),
    "a Content-Length that is no number": (
        post_job(framing=b"Content-Length: 12x\r\n\r\n"),
        "invalid character in content-length",
    ),
    "a negative Content-Length": (
        post_job(framing=b"Content-Length: -1\r\n\r\n"),
        "invalid character in content-length",
    ),
    "two Content-Lengths": (
        post_job(framing=b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        "duplicate content-length",
    ),
    "a Content-Length past any number": (
        post_job(framing=b"Content-Length: 99999999999999999999999\r\n\r\n"),
        "content-length overflow",
    ),
    "Content-Length and chunked together": (
        post_job(framing=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "transfer-encoding can't be present with content-length",
    ),
    "a chunk size that is no hex number": (
        post_job(framing=b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        "invalid character in chunk size",
    ),
    "a chunk longer than its size": (
        post_job(framing=b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}}}\r\n0\r\n\r\n"),
        "expected lf after chunk data",
    ),
    "a transfer coding other than chunked last": (
        post_job(framing=b"Transfer-Encoding: chunked, gzip\r\n\r\n"),
        "invalid `transfer-encoding` header value",
    ),
    "TLS to the plain-HTTP port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
        "invalid method encountered",
    ),
    "HTTP/2 without an upgrade": (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "http/2 is not served here; use http/1.1",
    ),
    "bytes that are no HTTP at all": (b"\x00\x01 this is not HTTP\r\n\r\n", "invalid method"),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=RUNNER_TYPES, request_head_timeout_seconds=HEAD_TIMEOUT
    )


def with_token(request: bytes, system: System) -> bytes:
    return request.replace(b"<token>", system.admin_token.encode())


def assert_json_error(answer: RawAnswer, status: int, code: str, sent: str = "") -> str:
    """The answer (to what ``sent`` names) is the API's error: this status and code, as JSON,
    the connection closed; its sentence (printable ASCII: nothing the client sent is echoed
    raw)."""
    assert answer.status == status, (sent, answer)
    assert answer.headers["content-type"] == "application/json", sent
    assert answer.headers["connection"] == "close", sent
    assert int(answer.headers["content-length"]) == len(answer.body), sent
    error = answer.json()["error"]
    assert error["code"] == code, (sent, error)
    message = str(error["message"])
    assert message.isascii(), (sent, message)
    assert message.isprintable(), (sent, message)
    return message


async def assert_still_serving(system: System) -> None:
    async with system.client() as client:
        response = await client.get("/api/jobs", params={"limit": 1})
    assert response.status_code == 200, response.text


async def test_each_request_the_parser_refuses_is_a_json_400(projector_and_api: System) -> None:
    """Each malformed kind: 400 MALFORMED_REQUEST in JSON, the parser's reason in the sentence,
    the connection closed; the API serves the next request, and no job was created."""
    for kind, (request, reason) in MALFORMED.items():
        answer = await raw_exchange(
            projector_and_api.base_url, with_token(request, projector_and_api)
        )
        message = assert_json_error(answer, 400, "MALFORMED_REQUEST", kind)
        assert reason in message.lower(), (kind, message)
        await assert_still_serving(projector_and_api)
    async with projector_and_api.client() as client:
        assert (await client.get("/api/jobs")).json()["items"] == []


async def test_a_head_over_the_limit_is_a_json_431(projector_and_api: System) -> None:
    """A request whose headers pass MAX_REQUEST_HEAD_BYTES: 431 REQUEST_HEAD_TOO_LARGE with the
    limit; one within it is served."""
    pad = b"X-Pad: %s" % (b"p" * MAX_REQUEST_HEAD_BYTES)
    answer = await raw_exchange(
        projector_and_api.base_url, with_token(get_jobs(pad), projector_and_api), pieces=10
    )
    message = assert_json_error(answer, 431, "REQUEST_HEAD_TOO_LARGE")
    assert answer.json()["error"]["limit"] == MAX_REQUEST_HEAD_BYTES
    assert str(MAX_REQUEST_HEAD_BYTES) in message
    within = b"X-Pad: %s" % (b"p" * (MAX_REQUEST_HEAD_BYTES // 2))
    served = await raw_exchange(
        projector_and_api.base_url,
        with_token(get_jobs(within, b"Connection: close"), projector_and_api),
    )
    assert served.status == 200, served


async def answer_to_a_head_sent_in_two(system: System, pause: float) -> RawAnswer:
    """The answer to a GET whose head is sent in two writes ``pause`` seconds apart (the
    second left out once the API has answered and closed the connection)."""
    request = with_token(get_jobs(b"Connection: close"), system)
    reader, writer = await open_raw(system.base_url)
    answered = asyncio.create_task(read_until_closed(reader))
    try:
        writer.write(request[:20])
        await writer.drain()
        await asyncio.sleep(pause)
        if not answered.done():
            writer.write(request[20:])
            await writer.drain()
        received = await asyncio.wait_for(answered, 30)
    finally:
        writer.close()
    return parse_answer(received)


async def test_a_head_slower_than_its_deadline_is_a_json_408(projector_and_api: System) -> None:
    """A head whose rest comes 0.7 of ``request_head_timeout_seconds`` after its first byte is
    served; 1.4 of it after, it is 408 REQUEST_HEAD_TIMEOUT in JSON, the connection closed."""
    served = await answer_to_a_head_sent_in_two(projector_and_api, 0.7 * HEAD_TIMEOUT)
    assert served.status == 200, served
    refused = await answer_to_a_head_sent_in_two(projector_and_api, 1.4 * HEAD_TIMEOUT)
    message = assert_json_error(refused, 408, "REQUEST_HEAD_TIMEOUT")
    assert refused.json()["error"]["limit_seconds"] == HEAD_TIMEOUT
    assert "2 s" in message
    await assert_still_serving(projector_and_api)


async def test_a_request_line_over_the_limit_is_a_json_431(projector_and_api: System) -> None:
    """A 100 KiB request target: 431 REQUEST_HEAD_TOO_LARGE, the sentence naming the request
    line; the API serves the next request."""
    target = b"/api/jobs?cursor=" + b"c" * 102400
    answer = await raw_exchange(
        projector_and_api.base_url,
        with_token(get_jobs(request_line=b"GET %s HTTP/1.1" % target), projector_and_api),
    )
    message = assert_json_error(answer, 431, "REQUEST_HEAD_TOO_LARGE")
    assert "request line" in message
    await assert_still_serving(projector_and_api)


async def test_a_malformed_request_after_a_job_request_loses_not_its_answer(
    projector_and_api: System,
) -> None:
    """A job request, then on the same connection, while it is being served, a malformed
    request: the job request's 201 comes (never a 400 saying nothing was done, which a client
    would retry into a second job), and the job exists once."""
    reader, writer = await open_raw(projector_and_api.base_url)
    try:
        writer.write(with_token(post_job(), projector_and_api))
        await writer.drain()
        await asyncio.sleep(0.005)  # the route is running
        writer.write(get_jobs(b"Accept: a\x01b"))
        await writer.drain()
        received = await asyncio.wait_for(read_until_closed(reader), 30)
    finally:
        writer.close()
    answer = parse_answer(received)
    assert answer.status == 201, answer
    job_id = answer.json()["id"]
    if status_lines(received) > 1:
        # The job request was answered before the malformed one was read: that one's 400.
        assert b'"MALFORMED_REQUEST"' in received.split(b"\r\nHTTP/1.1 ", 1)[1]
    async with projector_and_api.client() as client:
        jobs = (await client.get("/api/jobs")).json()["items"]
    assert [job["id"] for job in jobs] == [job_id]


# Pieces of request targets, joined as drawn: paths of the API, encodings, what a URL reserves.
TARGET_PARTS = [
    "/",
    "api",
    "jobs",
    "ui",
    "/api/jobs",
    "?",
    "&",
    "=",
    "%",
    "%00",
    "%ff",
    "%2F",
    "%2e%2e",
    "..",
    "*",
    "#",
    "http://",
    "h:1",
    "[::1]",
    "@",
    ";",
    "\\",
    "~",
    "'",
    "<",
    ">",
    "{",
    "}",
    "|",
    "^",
    "`",
    '"',
    "limit=",
    "cursor=",
    "-1",
    "99999999999999999999",
    "static",
    "health",
    "stream",
    "batches",
    "tokens",
    ":",
    "!",
]
METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "SEARCH",
    "QUERY",
    "get",
]
REQUEST_LINES = examples(
    st.tuples(
        st.sampled_from([*METHODS, ""]),
        st.one_of(
            st.lists(st.sampled_from(TARGET_PARTS), max_size=12).map("".join).map(str.encode),
            st.binary(max_size=40),
        ),
        st.sampled_from([" HTTP/1.1", " HTTP/1.0", " HTTP/0.9", " HTTP/2.0", " HTTP/1.1 x", ""]),
    ),
    200,
)


async def test_any_request_line_never_makes_a_500_or_a_plain_text_error(
    projector_and_api: System,
) -> None:
    """Whatever the method, target and version (drawn), the answer comes (a bounded read: no
    hang), is never a 500, and an error is JSON in the API's shape (or the web UI's HTML
    page)."""
    token = projector_and_api.admin_token.encode()
    for method, target, version in REQUEST_LINES:
        target = target.replace(b"\r", b"").replace(b"\n", b"")
        line = method.encode() + b" " + target + version.encode()
        request = b"%s\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % (line, token)
        request += b"Connection: close\r\nContent-Length: 0\r\n\r\n"
        answer = await raw_exchange(projector_and_api.base_url, request, timeout=20)
        content_type = answer.headers.get("content-type", "")
        assert answer.status < 500, (line, answer)
        if answer.status >= 400 and not content_type.startswith("text/html"):
            assert content_type.startswith("application/json"), (line, answer)
            assert answer.json()["error"]["code"], (line, answer)
    await assert_still_serving(projector_and_api)


# The headers the API reads (and one it does not), each with a value of any bytes but CR and
# LF (which would end it): what passes the parser (tabs, bytes 0x80-0xff) reaches the routes.
HEADERS = [
    "Authorization",
    "Idempotency-Key",
    "Cookie",
    "Origin",
    "Host",
    "Content-Type",
    "Accept",
    "Accept-Language",
    "Last-Event-ID",
    "If-None-Match",
    "Range",
    "Sec-Fetch-Site",
    "X-Forwarded-For",
    "X-Anything",
]
ANY_VALUE = st.binary(max_size=60).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
DRAWN = examples(
    st.tuples(
        st.sampled_from(HEADERS),
        st.one_of(ANY_VALUE, st.sampled_from([b"\t", b"a\tb", b"\xff", b"caf\xe9", b"\x80\x00"])),
        st.sampled_from(["GET /api/jobs?limit=1", "POST /api/jobs", "GET /health"]),
    ),
    120,
)


async def test_any_bytes_in_a_header_value_never_make_a_500_or_a_plain_text_answer(
    projector_and_api: System,
) -> None:
    """Whatever bytes a header value holds, the answer is JSON (an error in the API's shape),
    never a 500, and it comes (a bounded read: no hang)."""
    token = projector_and_api.admin_token.encode()
    for name, value, route in DRAWN:
        method, path = route.split(" ")
        headers = {
            b"host": b"Host: 127.0.0.1",
            b"authorization": b"Authorization: Bearer " + token,
            b"content-type": b"Content-Type: application/json",
        }
        headers[name.lower().encode()] = name.encode() + b": " + value
        body = JOB if method == "POST" else b""
        request = b"\r\n".join(
            [
                f"{method} {path} HTTP/1.1".encode(),
                *headers.values(),
                b"Connection: close",
                b"Content-Length: %d" % len(body),
            ]
        )
        answer = await raw_exchange(
            projector_and_api.base_url, request + b"\r\n\r\n" + body, timeout=30
        )
        sent = (name, value, route)
        assert answer.status != 500, (sent, answer)
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            sent,
            answer,
        )
        if answer.status >= 400:
            assert answer.json()["error"]["code"], (sent, answer)
    await assert_still_serving(projector_and_api)


async def test_jobrunner_api_answers_a_malformed_request_with_json(
    settings: Settings, tmp_path: Path
) -> None:
    """`jobrunner api` (as `jobrunner up` and compose start it) serves with the same protocol."""
    port = free_port()
    api = ServiceProcess("api", settings, tmp_path / "api.log", host="127.0.0.1", port=port)
    api.start()
    try:
        await wait_api_healthy(api)
        answer = await raw_exchange(f"http://127.0.0.1:{port}", get_jobs(b"Accept: a\x01b"))
        assert_json_error(answer, 400, "MALFORMED_REQUEST")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    finally:
        api.stop()


def cancel_head(job_id: str, *framing: bytes) -> bytes:
    """The head of a cancel of the admin's (``<token>`` stands for its token), with a body's
    framing headers: a cancel needs no body, but a client may send one."""
    lines = [
        f"POST /api/jobs/{job_id}/cancel HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Authorization: Bearer <token>",
        b"Content-Type: application/json",
        *framing,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_cancel_whose_body_proves_malformed_may_have_been_done(
    projector_and_api: System,
) -> None:
    """A cancel (a route that takes no body) sent with a chunked body whose second chunk is no
    chunk at all, in one write: the route was started at the head, so the 400
    MALFORMED_REQUEST says the request may have been acted on (``acted_on: "unknown"``) and to
    check before retrying; and it was: the job is cancelled."""
    system = projector_and_api
    async with system.client() as client:
        created = await client.post("/api/jobs", content=JOB, headers=JSON)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        head = cancel_head(job_id, b"Transfer-Encoding: chunked")
        request = with_token(head, system) + b"2\r\n{}\r\nzz\r\n"  # no chunk size
        received = await raw_exchange(system.base_url, request)
        after = await wait_status(client, job_id, "cancelled")
    message = assert_json_error(received, 400, "MALFORMED_REQUEST")
    assert "may have been acted on" in message
    assert "nothing was done" not in message
    assert received.json()["error"]["acted_on"] == "unknown"
    assert after["status"] == "cancelled"
    assert "cancelled" in await status_events(system.settings, job_id)


async def test_a_cancel_malformed_in_its_head_is_not_done(projector_and_api: System) -> None:
    """A cancel whose head is malformed (a control byte in a header) is refused before any route
    sees it: 400 MALFORMED_REQUEST saying nothing was done (``acted_on: "no"``), and the job is
    not cancelled."""
    system = projector_and_api
    async with system.client() as client:
        created = await client.post("/api/jobs", content=JOB, headers=JSON)
        job_id = created.json()["id"]
        head = cancel_head(job_id, b"X-Note: a\x01b", b"Content-Length: 2")
        received = await raw_exchange(system.base_url, with_token(head, system) + b"{}")
        after = (await client.get(f"/api/jobs/{job_id}")).json()
    message = assert_json_error(received, 400, "MALFORMED_REQUEST")
    assert "nothing was done" in message
    assert received.json()["error"]["acted_on"] == "no"
    assert after["status"] == "pending"
    assert "cancelled" not in await status_events(system.settings, job_id)


async def test_a_cancel_with_a_whole_body_is_done(projector_and_api: System) -> None:
    """A cancel sent with a body it does not take (chunked, or with a length) cancels the job:
    202, as without one."""
    system = projector_and_api
    framings = {
        "chunked": (b"Transfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n"),
        "with a length": (b"Content-Length: 2", b"{}"),
    }
    async with system.client() as client:
        for kind, (framing, body) in framings.items():
            created = await client.post("/api/jobs", content=JOB, headers=JSON)
            job_id = created.json()["id"]
            request = cancel_head(job_id, framing, b"Connection: close") + body
            answer = await raw_exchange(system.base_url, with_token(request, system), pieces=2)
            assert answer.status == 202, (kind, answer)
            assert answer.json()["status"] == "cancelled", (kind, answer)


async def test_a_cancel_declaring_a_body_it_never_sends_is_answered(
    projector_and_api: System,
) -> None:
    """A cancel whose head declares 1,000,000 bytes of body and no byte of it follows: the
    route takes no body, so it is done and answered 202 at once (no wait for the body)."""
    system = projector_and_api
    async with system.client() as client:
        created = await client.post("/api/jobs", content=JOB, headers=JSON)
        job_id = created.json()["id"]
    reader, writer = await open_raw(system.base_url)
    try:
        writer.write(with_token(cancel_head(job_id, b"Content-Length: 1000000"), system))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 202 "), head


async def test_a_request_refused_before_its_body_ended_is_answered_once(
    projector_and_api: System,
) -> None:
    """A cancel refused at its head (its body is not JSON: 415) whose chunked body then proves
    malformed: the 415 is its one answer (no second, 400, status line that the client would read
    as the next request's), and the connection closes."""
    system = projector_and_api
    async with system.client() as client:
        created = await client.post("/api/jobs", content=JOB, headers=JSON)
        job_id = created.json()["id"]
    head = cancel_head(job_id, b"Transfer-Encoding: chunked").replace(
        b"application/json", b"text/plain"
    )
    reader, writer = await open_raw(system.base_url)
    try:
        writer.write(with_token(head, system) + b"2\r\n{}\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        writer.write(b"zz\r\n")  # no chunk size
        await writer.drain()
        received = first + await asyncio.wait_for(read_until_closed(reader), 30)
    finally:
        writer.close()
    answer = parse_answer(received)
    assert answer.status == 415
    # Nothing after the 415's body (a second answer would follow it at once, no CRLF between).
    assert len(answer.body) == int(answer.headers["content-length"]), received
    assert b"MALFORMED_REQUEST" not in received
