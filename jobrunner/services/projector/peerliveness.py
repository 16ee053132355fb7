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
    # Probes start after half the bound and three of them fit in the other half.
    idle = max(int(dead_after / 2), 1)
    interval = max(int(dead_after / 6), 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", 3),
        # Data sent and not acknowledged (a query to a gone host) fails after the same bound.
        ("TCP_USER_TIMEOUT", int(dead_after * 1000)),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
