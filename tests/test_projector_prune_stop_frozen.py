"""A projector stopped while its read-model retention prunes on a frozen Postgres ends within
its stop: the prune is cut short as a batch is (cancelled, its connection terminated after
``STOP_GRACE_SECONDS``), and the next start prunes. The prune was not tied to the stop: the
projector waited for the frozen Postgres for ever, until `jobrunner up` SIGKILLed it.

Postgres is the test's own, frozen for real (SIGSTOP of the postmaster and every backend); the
projector runs in the test's process, its prune run every half second."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import service, store
from tests.freeze import freeze, thaw
from tests.tools.postgres_processes import postgres_pids

STOP_SECONDS = 1.5
# What the stop may take: its stop_seconds, the prune's grace and a loaded machine's room.
ENDS_WITHIN = STOP_SECONDS + service.STOP_GRACE_SECONDS + 5.0


async def test_a_projector_stopped_while_it_prunes_on_a_frozen_postgres_ends(
    settings: Settings,
    own_nats: EmbeddedNats,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention on, Postgres frozen while a prune waits on it, the projector stopped: it ends
    within its stop (and the prune's grace), not when Postgres thaws."""
    monkeypatch.setattr(service, "PRUNE_INTERVAL", 0.5)
    real_prune = store.prune
    pruning = 0  # prunes under way
    pruned = 0  # prunes done

    async def prune_seen(*args: Any, **kwargs: Any) -> int:
        nonlocal pruning, pruned
        pruning += 1
        try:
            return await real_prune(*args, **kwargs)
        finally:
            pruning -= 1
            pruned += 1

    monkeypatch.setattr(store, "prune", prune_seen)
    private = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        database_url=own_postgres.url,
        readmodel_retention_days=30.0,
        stop_seconds=STOP_SECONDS,
    )
    stop = asyncio.Event()
    projector = asyncio.create_task(service.run_projector(private, stop))
    pids: list[int] = []
    try:
        # Running: its first prune done, so its start (every read of it on Postgres) is over.
        # The read models existing was not enough: under CI's load the freeze came while the
        # start still read Postgres, and no prune began before the test gave up.
        async with asyncio.timeout(60):
            while not pruned:
                assert not projector.done(), projector
                await asyncio.sleep(0.1)
        pids = _frozen_postgres(own_postgres)
        # A prune under way now waits on the frozen server (begun before the freeze, or after).
        async with asyncio.timeout(30):
            while not pruning:  # noqa: ASYNC110 - the projector's own state, in this process
                await asyncio.sleep(0.05)
        stop.set()
        done, _ = await asyncio.wait({projector}, timeout=ENDS_WITHIN)
        if not done:
            projector.print_stack(limit=30)
        assert done, "the projector's stop waited for the frozen Postgres under its prune"
        assert projector.exception() is None
    finally:
        thaw(*{*pids, *postgres_pids(own_postgres)})  # a freeze that failed half-way too
        stop.set()
        if not projector.done():
            projector.cancel()
            await asyncio.wait({projector}, timeout=30)


def _frozen_postgres(server: EmbeddedPostgres) -> list[int]:
    """Freeze the postmaster first (no backend is started after it), then its backends (one
    exiting meanwhile, a zombie, counts as frozen: ``tests.freeze``): the pids frozen."""
    postmaster, *_ = postgres_pids(server)
    freeze(postmaster)
    pids = [postmaster]
    for pid in postgres_pids(server)[1:]:
        with contextlib.suppress(ProcessLookupError):  # gone before its freeze
            freeze(pid)
            pids.append(pid)
    return pids
