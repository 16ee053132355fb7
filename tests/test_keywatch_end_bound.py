"""A bucket watch's end waits ``keywatch.END_SECONDS`` at most for its UNSUB (NATS frozen, the
connection clogged: see tests/tools/clogged_nats.py): a thaw within it and the watch is
unsubscribed, nothing said; a thaw past it and the end returns without it, said in the log
(the UNSUB stays queued, sent when NATS takes it)."""

from __future__ import annotations

import uuid

import nats
import pytest
from structlog.testing import capture_logs

from jobrunner.common import keywatch
from jobrunner.embedded.nats import EmbeddedNats
from tests.tools.clogged_nats import frozen_and_clogged

pytestmark = pytest.mark.timeout(120)

NOT_UNSUBSCRIBED = (
    "a bucket watch not unsubscribed in time: the UNSUB is queued, sent when NATS takes it"
)


@pytest.mark.parametrize(
    ("thawed_after", "unsubscribed"),
    [(keywatch.END_SECONDS - 0.7, True), (keywatch.END_SECONDS + 3.0, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
async def test_a_watchs_end_waits_for_its_unsubscribe_within_its_bound(
    own_nats: EmbeddedNats, thawed_after: float, unsubscribed: bool
) -> None:
    """Thawed just within END_SECONDS: unsubscribed, nothing said. Thawed past END_SECONDS: the
    end is over before the thaw, the UNSUB left queued and said."""
    nc = await nats.connect(own_nats.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=f"b{uuid.uuid4().hex[:8]}")
        await kv.put("k.a", b"1")
        watcher = await keywatch.watch_keys(kv, ["k.>"])
        with capture_logs() as logs:
            async with frozen_and_clogged(own_nats, nc, thawed_after=thawed_after):
                await keywatch.end_watch(watcher)
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said
    finally:
        await nc.close()
