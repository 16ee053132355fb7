"""The projector gives up a Postgres connection whose far end has gone silent, not one that is
merely slow.

A batch's transaction has no deadline of ours: a 10,000-event ``COPY`` on a loaded machine may
take long, and a Postgres that is frozen (SIGSTOPped, swapping) but alive is waited out, then
goes on where it was. But a server whose host has gone (a crash, a partition, a failover to
another host behind the same address) sends nothing, not even a reset: asyncpg sets no TCP
keepalive, so a projector waiting for an answer there waited for ever, even once a new server
answered at the address. The kernel tells the two apart: a live host acknowledges keepalive
probes and data whatever its Postgres does, a gone one does not. So each connection gets
keepalive probes and ``TCP_USER_TIMEOUT``: after ``dead_after`` seconds without an
acknowledgement the connection fails, the batch is tried again on a new one (service.py) and
nothing is set aside.

The backend gets the same bound (``server_settings``): after a cut that heals, a backend left
inside a batch's transaction, waiting for the projector's next message, would otherwise keep the
checkpoint row locked for Postgres' own keepalive default (about 2 h), and the projector's new
connection would wait for it all that time.
"""

from __future__ import annotations

import socket

import asyncpg


def watch_peer(conn: asyncpg.Connection, dead_after: float) -> None:
    """Fail ``conn`` once its far end has acknowledged nothing for about ``dead_after`` seconds
    (a Unix socket, or a platform without these options, is left as it is)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle, interval, count, user_timeout_ms = _schedule(dead_after)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", user_timeout_ms),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def server_settings(dead_after: float) -> dict[str, str]:
    """Postgres settings (per session, Postgres 12 and later) that make the backend give up its
    client after the same bound: it then ends its transaction and frees the locks it held."""
    idle, interval, count, user_timeout_ms = _schedule(dead_after)
    return {
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": str(interval),
        "tcp_keepalives_count": str(count),
        "tcp_user_timeout": str(user_timeout_ms),
    }


def _schedule(dead_after: float) -> tuple[int, int, int, int]:
    """Keepalive idle and interval seconds, probe count, and TCP_USER_TIMEOUT in ms: probes
    start after half the bound, three fit in the other half (whole seconds, at least one: zero
    would mean the system default), and data or probes unacknowledged for the bound fail it."""
    idle = max(int(dead_after / 2), 1)
    interval = max(int(dead_after / 6), 1)
    return idle, interval, 3, max(int(dead_after * 1000), 1)
