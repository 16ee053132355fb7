"""`jobrunner up`'s probes of its services (the API's /health, each service's /metrics) take an
answer that is not HTTP (another program on the port, a service killed mid-answer) for "not up
yet", as they take a refused connection: before, http.client's errors that are not OSErrors
(a bad status line) ended `up`'s start with a traceback. An HTTP answer of /health that does
not name the API `up` started (another program took the port) ends the start naming the port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from jobrunner.embedded.serverprocess import free_port
from jobrunner.supervisor import Service, has_started, wait_healthy
from tests.tools.stranger_server import stranger_on


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
    with not_http() as address:
        host, port = address.split(":")
        with pytest.raises(RuntimeError, match=r"did not answer on .* 1 s"):
            await asyncio.wait_for(wait_healthy(host, int(port), "ours", api, timeout=1.0), 30)


async def test_a_health_port_answered_healthy_by_another_program_fails_the_start() -> None:
    """Another program answering 200 on the API's port (it took the port after `up` checked
    it): `up`'s start fails with a sentence naming the port and what answered, rather than
    announce that program as jobrunner."""
    port = free_port()
    with (
        stranger_on(port, 200, b'{"status": "ok"}'),
        pytest.raises(RuntimeError) as failed,
    ):
        await wait_healthy("127.0.0.1", port, "ours", Service("api", {}), timeout=30)
    assert str(failed.value) == (
        f"port {port} does not answer as this jobrunner's API: /health answered 200 "
        """'{"status": "ok"}', not instance 'ours' (our api not started); another program may """
        "have taken the port after the start checked it: stop it, or choose another port "
        "with --port"
    )


async def test_a_health_answer_of_another_jobrunner_api_fails_the_start() -> None:
    """Another jobrunner's API on the port (its /health names another instance): not ours."""
    port = free_port()
    with (
        stranger_on(port, 503, b'{"status": "degraded", "instance": "theirs"}'),
        pytest.raises(RuntimeError, match=f"port {port} does not answer as this jobrunner's API"),
    ):
        await wait_healthy("127.0.0.1", port, "ours", Service("api", {}), timeout=30)


async def test_a_health_answer_naming_our_api_ends_the_wait() -> None:
    """/health answering 200 with our API's instance name: the start goes on."""
    port = free_port()
    with stranger_on(port, 200, b'{"status": "ok", "instance": "ours"}'):
        await wait_healthy("127.0.0.1", port, "ours", Service("api", {}), timeout=30)


async def test_an_api_on_ipv6_loopback_is_waited_for_by_its_health() -> None:
    """`jobrunner up --host ::1`: the start asks the API on [::1] and goes on once /health names
    it (before, parsing the address ended `up` with a traceback)."""
    port = free_port()
    with stranger_on(port, 200, b'{"status": "ok", "instance": "ours"}', host="::1"):
        await wait_healthy("::1", port, "ours", Service("api", {}), timeout=30)


async def test_a_health_answer_over_4_kib_naming_our_api_ends_the_wait() -> None:
    """A /health body of many kilobytes (the projector's set-aside error in it, twice): the
    start still reads our API's name in it, rather than refuse its own API."""
    error = "é" * 3000
    body = (
        f'{{"status": "ok", "problems": [{{"error": "{error}"}}, {{"error": "{error}"}}], '
        '"instance": "ours"}'
    ).encode()
    assert len(body) > 4096
    port = free_port()
    with stranger_on(port, 200, body):
        await wait_healthy("127.0.0.1", port, "ours", Service("api", {}), timeout=30)


async def test_our_api_answering_503_until_the_timeout_names_its_problems() -> None:
    """Our API up but unavailable for the whole start: the sentence says it answered 503 and
    with which problem codes, not that it did not answer."""
    body = (
        b'{"status": "unavailable", "instance": "ours", "problems": [{"code": "NATS_UNREACHABLE"}]}'
    )
    port = free_port()
    with (
        stranger_on(port, 503, body),
        pytest.raises(RuntimeError, match=r"answered 503 on .* 1 s: NATS_UNREACHABLE$"),
    ):
        await wait_healthy("127.0.0.1", port, "ours", Service("api", {}), timeout=1)
