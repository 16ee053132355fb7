"""The AckHoldingProxy (tests/ackholding_proxy.py) against a real nats-server: it holds only a
publish made after arming, and a fault struck once ``stored()`` lands after the message was
stored (from the review of s21audit)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator

import nats
import pytest

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from tests.ackholding_proxy import AckHoldingProxy
from tests.freeze import freeze, thaw


@pytest.fixture
def server() -> Iterator[EmbeddedNats]:
    with scratch_dir("ackholding-proxy-") as root:
        nats_server = EmbeddedNats(root / "store")
        nats_server.start()
        try:
            yield nats_server
        finally:
            nats_server.stop()


async def test_a_publish_before_arming_does_not_trigger_on_a_later_chunk(
    server: EmbeddedNats,
) -> None:
    """The control line of a publish to ``a.b`` sent before ``arm("a.b")`` is still in what the
    proxy read last; a later publish to another subject must not fire it."""
    async with AckHoldingProxy("127.0.0.1", server.port) as proxy:
        nc = await nats.connect(proxy.url())
        try:
            await nc.publish("a.b", b"x")
            await nc.flush()
            proxy.arm("a.b")
            await nc.publish("c.d", b"y")
            await nc.flush()
            assert not proxy.hit.is_set(), "armed on a.b, fired by a publish to c.d"
        finally:
            proxy.release()
            await nc.close()


async def test_a_freeze_once_stored_lands_after_the_message_is_stored(
    server: EmbeddedNats,
) -> None:
    """As ``strike_at_ack`` freezes: after ``stored()``. The server's own timestamp of each
    message must be before the freeze (a SIGSTOP at ``hit`` landed before the server read the
    publish in 6 of 20 tries under load)."""
    assert server.proc is not None
    direct = await nats.connect(server.url)
    await direct.jetstream().add_stream(name="T", subjects=["t.>"])
    late: list[int] = []
    async with AckHoldingProxy("127.0.0.1", server.port) as proxy:
        nc = await nats.connect(proxy.url())
        js = nc.jetstream()
        try:
            for i in range(20):
                proxy.arm(f"t.{i}")
                publish = asyncio.create_task(js.publish(f"t.{i}", b"z" * 100, timeout=10))
                await proxy.hit.wait()
                assert await proxy.stored(), f"try {i}: no ack seen"
                freeze(server.proc.pid)
                frozen_at = datetime.datetime.now(datetime.UTC)
                await asyncio.sleep(0.2)
                thaw(server.proc.pid)
                proxy.release()
                await publish
                msg = await direct.jetstream().get_last_msg("T", f"t.{i}")
                assert msg.time is not None
                if msg.time > frozen_at:
                    late.append(i)
        finally:
            proxy.release()
            await nc.close()
            await direct.close()
    assert not late, f"stored only after the freeze began: tries {late}"
