"""``/health``'s runners read (``runnerpool.alive_runners``) cut off by its NATS bound at any of
its steps leaves nothing behind: no client subscription, no consumer on the bucket's stream.
Through nats-py's ``kv.keys()`` a cut after the watcher subscribed left one of each per
``/health`` (the cancel skips nats-py's cleanup, which runs on ``except Exception`` only)."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from jobrunner.common import runnerpool
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import health
from tests.freeze import frozen

BOUND = 1.0  # health_nats_timeout_seconds here; every cut below waits it out
BEAT = b'{"runner_id":"r1","host":"h","pid":1,"at":"2026-01-01T00:00:00Z"}'


async def cut_after(nc: Client, server: EmbeddedNats, sent: int, names: Names) -> bool:
    """Run the read; freeze NATS once the client sent ``sent`` more messages (the read's
    requests); True when it was cut off there, False when it finished first."""
    assert server.proc is not None
    js = nc.jetstream()
    base = nc.stats["out_msgs"]
    bound = health.NatsBound.from_now(BOUND)
    read = asyncio.create_task(
        health._read_nats(bound, lambda: runnerpool.alive_runners(js, names))
    )
    # The client counts its sends; nothing to wait on but the count itself.
    while nc.stats["out_msgs"] < base + sent and not read.done():  # noqa: ASYNC110
        await asyncio.sleep(0)
    if read.done():
        read.result()  # a read that finished must have worked
        return False
    with frozen(server.proc.pid):
        try:
            await read
        except TimeoutError:
            return True
        raise AssertionError("the read finished while NATS was frozen")


async def test_alive_runners_cut_off_at_any_step_leaves_nothing(own_nats: EmbeddedNats) -> None:
    names = Names("cut")
    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=names.runners_bucket)
        await kv.put("r1", BEAT)
        await kv.put("r2", BEAT.replace(b"r1", b"r2"))
        await kv.delete("r2")  # a delete marker's subject stays in the stream
        stream = f"KV_{names.runners_bucket}"
        subscriptions = len(nc._subs)
        consumers = (await js.stream_info(stream)).state.consumer_count
        sent = 1
        while await cut_after(nc, own_nats, sent, names):
            await nc.flush()  # what the frozen server had not read yet is read now
            await asyncio.sleep(0.5)  # and a consumer it makes of it would be there
            assert len(nc._subs) == subscriptions, f"cut after request {sent}"
            info = await js.stream_info(stream)
            assert info.state.consumer_count == consumers, f"cut after request {sent}"
            sent += 1
        assert sent > 2, "the read was never cut off"
        # Uncut, it reads the live runner and skips the deleted one.
        alive = await runnerpool.alive_runners(js, names)
        assert [beat.runner_id for beat in alive] == ["r1"]
    finally:
        await nc.close()
