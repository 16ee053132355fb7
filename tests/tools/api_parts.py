"""Parts of an in-process API a test looks at or watches: its read-model gate, its read pool,
the deadlines its reads ask the pool for."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from jobrunner.common.readmodelversion import READMODEL_VERSION
from jobrunner.contracts.names import Names
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.readmodelgate import ReadModelGate, ReadModelState
from jobrunner.services.api.readpool import ReadPool
from tests.system import System


def api_context_of(system: System) -> ApiContext:
    """The in-process API's context (its NATS connection, names, settings, pools)."""
    return system._server.config.app.state.ctx  # type: ignore[union-attr,no-any-return]


def gate_of(system: System) -> ReadModelGate:
    """The API's read-model gate (what version it knows the read models to be)."""
    return system._server.config.app.state.ctx.readmodels  # type: ignore[union-attr,no-any-return]


def serving_gate() -> ReadModelGate:
    """A gate that knows the read models are this version, told rather than asked (no NATS
    needed): a stream's look-ups are made."""
    gate = ReadModelGate(None, None, Names("t"), 60.0)  # type: ignore[arg-type]
    gate.state = ReadModelState(found=READMODEL_VERSION)
    gate.known = True
    return gate


def read_pool_of(system: System) -> ReadPool:
    """The API's pool of connections for reads of the read models."""
    return system._server.config.app.state.ctx.pool  # type: ignore[union-attr,no-any-return]


def health_pool_of(system: System) -> ReadPool:
    """The API's pool of the one connection ``GET /health`` reads Postgres on."""
    return system._server.config.app.state.ctx.health_pool  # type: ignore[union-attr,no-any-return]


def pooled_connections(pool: asyncpg.Pool) -> list[asyncpg.Connection]:
    """The open connections ``pool`` holds, idle or lent out (asyncpg lists them nowhere
    public: its holders')."""
    return [
        holder._con
        for holder in pool._holders
        if holder._con is not None and not holder._con.is_closed()
    ]


class AcquiredDeadlines:
    """Records the deadline of every connection the API's read pool is asked for (None: the
    pool's own, ``api_read_timeout_seconds``), and sets ``began`` at the first with
    ``watched``'s deadline."""

    def __init__(
        self, system: System, monkeypatch: pytest.MonkeyPatch, watched: float | None = None
    ) -> None:
        self.deadlines: list[float | None] = []
        self.began = asyncio.Event()
        pool = read_pool_of(system)
        acquire = pool.acquire

        def recorded(deadline_seconds: float | None = None) -> Any:
            self.deadlines.append(deadline_seconds)
            if watched is not None and deadline_seconds == watched:
                self.began.set()
            return acquire(deadline_seconds)

        monkeypatch.setattr(pool, "acquire", recorded)
        self._pool, self._acquire, self._monkeypatch = pool, acquire, monkeypatch

    def stop(self) -> None:
        """Record no more."""
        self._monkeypatch.setattr(self._pool, "acquire", self._acquire)

    def bounded(self) -> list[float]:
        """The deadlines given (the gate's watch asks with none: left out)."""
        return [d for d in self.deadlines if d is not None]
