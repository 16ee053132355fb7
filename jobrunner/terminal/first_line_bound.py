"""While a followed stream is lost, one bound on an attempt up to the stream's first line: the
wait for the answer's headers and then for its first line, together within the time left of
``--reconnect-for`` (a host that accepts and stays silent, or answers 200 and then nothing, must
not make the give-up late). A timer started as the TCP connection is made (httpx's documented
``trace`` request extension says when, with the connection) ends the connection when the time
runs out; the stream's first line stops it. Each attempt makes a connection of its own for it.
The read timeout cannot be this bound: httpx keeps one for the whole response, and a stream that
is back is given ``SILENT_STREAM_SECONDS`` between its lines (a job may say nothing between
keep-alives)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any


class FirstLineBound:
    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self._timer: threading.Timer | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self.fired = threading.Event()  # the time ran out before the first line

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` extension: the timer starts as the connection is made."""
        if event == "connection.connect_tcp.complete":
            self.start(info["return_value"])

    def start(self, network_stream: Any) -> None:
        """The timer on ``network_stream`` (httpcore's: its ``socket`` is ended), unless it
        runs or was stopped already. The attempt's client keeps no connection (``Api.unpooled``):
        one taken from a pool would report no connect, and start no timer."""
        with self._lock:
            if self._timer is not None or self._stopped:
                return
            sock = network_stream.get_extra_info("socket")
            left = max(0.0, self._deadline - time.monotonic())
            self._timer = threading.Timer(left, self._end, (sock,))
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        """The first line came (or the attempt ended): the timer is not needed."""
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def _end(self, sock: socket.socket | None) -> None:
        self.fired.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read: the answer ends
