"""The pool of connections a long work of the projector's loads and indexes with (`jobrunner
replay`, the read models' rebuild): its sessions set up as the work's lock holder and probe
are (postgreswatch.WORK_SESSION_SETTINGS), so that neither a server's statement_timeout nor its
idle_session_timeout ends one. A pooled connection waits idle between two batches, or the whole
loading while its sibling copies, and a server that ended it would fail the work at its next
use."""

from __future__ import annotations

import asyncpg

from jobrunner.common import database, postgreswatch
from jobrunner.common.postgresconnect import CHECK_CONNECT_SECONDS
from jobrunner.services.projector import timestamps


async def open_work_pool(database_url: str, size: int) -> asyncpg.Pool:
    """``size`` connections (two opened now). Bounded connects, a socket's error Postgres'
    (said as the command's check: cli.py). The rebuilt tables are checked against the live ones
    before they count: waiting for each bulk transaction to reach the disk buys nothing (the
    swap commits synchronously)."""
    return await database.create_pool(
        database_url,
        min_size=2,
        max_size=size,
        init=timestamps.init_connection,
        connect=postgreswatch.connect_work,
        connect_timeout=CHECK_CONNECT_SECONDS,
        session_settings={"synchronous_commit": "off", **postgreswatch.WORK_SESSION_SETTINGS},
    )
