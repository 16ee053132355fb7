"""``jobrunner logs --follow`` against a server that answers the stream's headers and then sends
nothing, not even a keep-alive (a frozen API, a peer gone without closing the connection): the
client takes the stream for lost after ``SILENT_STREAM_SECONDS``, says so, and gives up after
``--reconnect-for`` with exit code 69. (It used to wait for ever, in silence.)"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from jobrunner.terminal import follow
from jobrunner.terminal.connection import EXIT_UNREACHABLE, Api, ClientError, Target

HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A server that answers each stream's headers, then holds the connection and says nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed at the test's end
            conn.recv(65536)
            conn.sendall(HEADERS)
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def follower(url: str, reconnect_for: float) -> tuple[follow.Follower, io.StringIO]:
    """A follower of a job at ``url`` and what it says on stderr."""
    said = io.StringIO()
    following = follow.Follower(
        Api(Target(url, None, "--url")),
        "0" * 32,
        Console(file=io.StringIO()),
        reconnect_for=reconnect_for,
        notices=Console(file=said, width=500),
    )
    return following, said


def test_a_silent_stream_is_taken_for_lost_and_given_up_after_the_bound(
    silent_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "SILENT_STREAM_SECONDS", 1.0)
    following, said = follower(silent_api, reconnect_for=2)
    began = time.monotonic()
    with pytest.raises(ClientError) as raised:
        following.run()
    assert raised.value.exit_code == EXIT_UNREACHABLE
    assert time.monotonic() - began < 30, "the silence was not bounded"
    told = said.getvalue()
    assert "lost (ReadTimeout" in told, told
