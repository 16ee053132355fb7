"""Ports for embedded and test servers (jobrunner.embedded.serverprocess.free_port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from jobrunner.embedded import serverprocess
from jobrunner.embedded.serverprocess import free_port


def ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_free_port_lies_below_the_range_outgoing_connections_take() -> None:
    """A server's port is never one the kernel may give a client's socket meanwhile, so a
    server restarted on its port finds it free."""
    ports = {free_port() for _ in range(20)}
    assert all(1024 < port < ephemeral_start() for port in ports), ports
    assert len(ports) > 1, "chosen at random, so that parallel test workers rarely meet"


def test_a_free_port_can_be_listened_on() -> None:
    """The port handed out is free: a server can listen on it."""
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_a_port_browsers_refuse_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """10080 is on the browsers' bad-port list (Chromium: ERR_UNSAFE_PORT): a server there
    could not be opened in a browser, so the choice moves on to the next port drawn."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        other = int(s.getsockname()[1])
    drawn = iter([10080, other])
    monkeypatch.setattr(serverprocess.random, "randrange", lambda *_: next(drawn))
    assert serverprocess.free_port() == other
