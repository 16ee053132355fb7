"""Another program's HTTP server on a port a test meant for its own API: every request, /health
included, gets the same answer (a 401 with HTML, or a 200 that looks healthy). It listens in a
thread of its own, so a probe from the event loop and one from a worker thread both reach it;
and so it serves as a peer (a metrics peer, a webhook receiver) that answers while the event
loop of the code under test is held.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

from jobrunner.supervisor import port_holder_sentence


def wait_port_free(port: int, host: str = "127.0.0.1", within: float = 30.0) -> None:
    """Until ``host``:``port`` can be listened on (as `jobrunner up` looks at it,
    ``supervisor.port_holder_sentence``): a killed server's socket closes only once every
    thread of it has exited, a moment after its main thread shows as dead."""
    deadline = time.monotonic() + within
    while (taken := port_holder_sentence(host, port)) is not None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"still taken after {within} s: {taken}")
        time.sleep(0.05)


@contextlib.contextmanager
def stranger_on(
    port: int,
    status: int = 401,
    body: bytes = b"<html>Unauthorized</html>",
    host: str = "127.0.0.1",
    before_answer: Callable[[], None] = lambda: None,
    trickle: float = 0.0,
    after_answer: Callable[[], None] = lambda: None,
    head_trickle: float = 0.0,
) -> Iterator[ThreadingHTTPServer]:
    """A server on ``host``:``port`` (IPv6 when ``host`` is; port 0: one free, in the server's
    ``server_address``) answering a GET or a POST (its body read) ``status`` and ``body``
    until the block ends. ``before_answer`` runs in the server's thread once a request has
    come, ``after_answer`` once the answer is sent; with ``trickle``, the body is sent a byte
    every that many seconds (a peer that never stops sending, to a client's read timeout
    between bytes); with ``head_trickle``, the status line and a header are sent a byte every
    that many seconds and never finished (an answer that never ends, to a client's deadline
    on the whole answer), until the block ends."""
    ending = threading.Event()

    def drip(wfile: BinaryIO, data: bytes, every: float) -> None:
        for byte in data:
            if ending.is_set():
                return
            wfile.write(bytes([byte]))
            wfile.flush()
            time.sleep(every)

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            before_answer()
            # The client may have given up meanwhile: it closed the connection.
            with contextlib.suppress(OSError):
                if head_trickle:
                    drip(
                        self.wfile,
                        b"HTTP/1.1 200 OK\r\nX-Never-Ending: " + b"a" * 10**7,
                        head_trickle,
                    )
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if trickle:
                    drip(self.wfile, body, trickle)
                else:
                    self.wfile.write(body)
                    self.wfile.flush()
            after_answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test's output is the API's

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        ending.set()
        server.shutdown()
        server.server_close()
        thread.join()
