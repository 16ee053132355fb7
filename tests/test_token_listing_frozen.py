"""The token listing (``GET /api/tokens``) waits ``tokens.ALL_ENTRY_SECONDS`` at most for the
watch's next record: NATS frozen midway through a listing and thawed within it, the listing
finds every record; frozen past it, the listing fails (its watch ended) before the thaw, rather
than holding its request until NATS answers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats
import pytest
from nats.js.kv import KeyValue

from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.security import tokens
from jobrunner.services.api.security.tokens import TokenStore
from tests.freeze import freeze, thaw, thaw_later
from tests.tools.token_records import store_viewer_tokens

pytestmark = pytest.mark.timeout(180)

# Records in the bucket: more than the server sends in the moment between the first record's
# arrival and the freeze, so that the listing waits on the frozen server.
RECORDS = 20_000


@pytest.mark.parametrize(
    ("thawed_after", "listed"),
    [(tokens.ALL_ENTRY_SECONDS - 3.0, True), (tokens.ALL_ENTRY_SECONDS + 3.0, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
async def test_a_token_listing_waits_for_a_frozen_nats_within_its_bound(
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    thawed_after: float,
    listed: bool,
) -> None:
    """NATS frozen as the listing's first record arrives: thawed 2 s later, every record is
    listed; thawed 8 s later, past ALL_ENTRY_SECONDS (5 s), the listing has failed first."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    nc = await nats.connect(own_nats.url)
    thawing: asyncio.TimerHandle | None = None
    try:
        js = nc.jetstream()
        store = await TokenStore.open(js, Names(f"t{uuid.uuid4().hex[:8]}"))
        await store_viewer_tokens(js, store, RECORDS)
        real_updates = KeyValue.KeyWatcher.updates
        frozen = asyncio.Event()

        async def frozen_after_the_first(self: KeyValue.KeyWatcher, *a: Any, **kw: Any) -> Any:
            entry = await real_updates(self, *a, **kw)
            if not frozen.is_set():
                freeze(pid)
                frozen.set()
                nonlocal thawing
                thawing = thaw_later(thawed_after, pid)
            return entry

        monkeypatch.setattr(KeyValue.KeyWatcher, "updates", frozen_after_the_first)
        listing = asyncio.ensure_future(store.all())
        await asyncio.wait({listing}, timeout=60)
        assert listing.done()
        assert thawing is not None
        if listed:
            assert len(listing.result()) == RECORDS
        else:
            assert isinstance(listing.exception(), TimeoutError), listing
            # Before the thaw: the listing did not wait for NATS to answer.
            assert thawing.when() > asyncio.get_running_loop().time(), "ended at the thaw"
    finally:
        if thawing is not None:
            thawing.cancel()
        thaw(pid)
        await nc.close()
