"""NATS restarted (killed, started again on its store) while a token listing reads its records:
the listing either lists every record or fails with a NATS error (the API's 503
EVENT_STORE_UNAVAILABLE, "try again shortly"); never a list with a record missing, never a hang.
The watch's consumer, lost with the server's memory, is made again after the reconnect from the
record after the last one received (``subscription.reopen_after_reconnect``); its current state
not delivered yet, the listing then watches again from a new one (``keywatch.WatchLostMessages``:
the remade consumer sends old revisions before each key's last)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js.kv import KeyValue

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.security.tokens import TokenStore
from tests.tools.token_records import store_viewer_tokens

pytestmark = pytest.mark.timeout(180)

RECORDS = 20_000  # more than arrive before the kill: the listing is midway when NATS goes


@pytest.mark.parametrize("down", [0.0, 2.0], ids=["started-at-once", "down-2s"])
async def test_a_token_listing_across_a_nats_restart_is_whole_or_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, down: float
) -> None:
    """Killed at the listing's first record and started again ``down`` seconds later: every
    record listed, or nats-py's TimeoutError (the listing's 5 s bound for its next record);
    the listing ends within a minute."""
    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    nc = await eventstore.connect(Settings(nats_url=server.url, prefix="restart"), "test")
    try:
        js = nc.jetstream()
        store = await TokenStore.open(js, Names(f"t{uuid.uuid4().hex[:8]}"))
        await store_viewer_tokens(js, store, RECORDS)
        real_updates = KeyValue.KeyWatcher.updates
        restarting: asyncio.Task[None] | None = None
        consumers: set[str] = set()  # the watch's consumers its records came from

        async def restart() -> None:
            nonlocal server
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(down)
            server = EmbeddedNats(server.store_dir, port=server.port)
            await asyncio.to_thread(server.start)

        async def restarted_after_the_first(self: KeyValue.KeyWatcher, *a: Any, **kw: Any) -> Any:
            nonlocal restarting
            entry = await real_updates(self, *a, **kw)
            consumers.add(self._sub._consumer)
            if restarting is None:
                restarting = asyncio.ensure_future(restart())
            return entry

        monkeypatch.setattr(KeyValue.KeyWatcher, "updates", restarted_after_the_first)
        listing = asyncio.ensure_future(store.all())
        await asyncio.wait({listing}, timeout=60)
        assert listing.done(), "the listing hung across the restart"
        assert restarting is not None
        await restarting
        if listing.exception() is None:
            ids = sorted(record.id for record in listing.result())
            assert ids == sorted(f"t{n}" for n in range(RECORDS))
            assert len(consumers) >= 2, "not read across the restart: the test tested nothing"
        else:
            assert isinstance(listing.exception(), nats.errors.Error), listing
    finally:
        await eventstore.close(nc)
        server.stop()
