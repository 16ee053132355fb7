"""A webhook receiver in a thread of its own, answering each POST when the test says: what the
notifier meets while its own event loop is held (a receiver on that loop would be held too)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class ThreadedReceiver:
    """Reads a POST on each connection, then runs ``before_answer(self)`` (in its thread), waits
    ``answer_after`` seconds and answers 200, or never answers (``answer_after`` None) until
    closed. ``asked_at``: the ``time.monotonic()`` of each request's first bytes."""

    def __init__(
        self,
        answer_after: float | None,
        before_answer: Callable[[ThreadedReceiver], None] = lambda _: None,
    ) -> None:
        self.answer_after = answer_after
        self.before_answer = before_answer
        self.asked_at: list[float] = []
        self.answered = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while not self._closing.is_set():
                conn, _ = self._listener.accept()
                with conn:
                    conn.settimeout(60)  # a bound on a broken test only
                    if self._read_request(conn):
                        self._answer(conn)

    def _read_request(self, conn: socket.socket) -> bool:
        """Whether a whole request came (not the sender's close half-way)."""
        request = conn.recv(65536)
        self.asked_at.append(time.monotonic())
        while b"\r\n\r\n" not in request:
            more = conn.recv(65536)
            if not more:
                return False
            request += more
        head, _, body = request.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            more = conn.recv(65536)
            if not more:
                return False
            body += more
        return True

    def _answer(self, conn: socket.socket) -> None:
        self.before_answer(self)
        if self.answer_after is None:
            self._closing.wait(60)  # a bound on a broken test only
            return
        time.sleep(self.answer_after)
        conn.sendall(ANSWER)
        self.answered.set()

    def close(self) -> None:
        self._closing.set()
        # shutdown, not only close: a close does not wake the thread's accept on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(65)


@contextlib.contextmanager
def threaded_receiver(
    answer_after: float | None, before_answer: Callable[[ThreadedReceiver], None] = lambda _: None
) -> Iterator[ThreadedReceiver]:
    receiver = ThreadedReceiver(answer_after, before_answer)
    try:
        yield receiver
    finally:
        receiver.close()
