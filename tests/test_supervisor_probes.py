"""`jobrunner up`'s probes of its services (the API's /health, each service's /metrics) take an
answer that is not HTTP (another program on the port, a service killed mid-answer) for "not up
yet", as they take a refused connection: before, http.client's errors that are not OSErrors
(a bad status line) ended `up`'s start with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from jobrunner.supervisor import Service, has_started, wait_healthy


@contextlib.contextmanager
def not_http() -> Iterator[str]:
    """A listener on loopback that answers every connection with a line that is not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        listener.close()


def test_a_metrics_port_answering_not_in_http_is_not_started() -> None:
    with not_http() as address:
        assert not has_started(Service("projector", {"JOBRUNNER_METRICS_ADDRESS": address}))


async def test_a_health_port_answering_not_in_http_is_waited_for_until_the_timeout() -> None:
    api = Service("api", {})
    with not_http() as address, pytest.raises(RuntimeError, match=r"did not answer on .* 1 s"):
        await asyncio.wait_for(wait_healthy(f"http://{address}", api, timeout=1.0), 30)
