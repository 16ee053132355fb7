"""An upload given up mid-chunks (the runner's lease lost, an external upload's patience over)
leaves none of its chunks: the purge of the attempt waits for the chunks still in flight to be
stored (their acks) before it is sent, ``ACK_WAIT_SECONDS`` at most.

JetStream stores a stream's messages apart from its API requests: a purge sent while chunks
are in flight often ran before the last of them was stored, and a runner's attempt has no
pending-purge record for the sweep to purge again, so that chunk stayed for the bucket's max
age (by default for ever)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from jobrunner.common import ackinbox, artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.tools.restartable_nats import restartable

# Five chunks: three are sent, their acks not yet awaited (the pipeline holds 16), when the
# upload is stopped.
CONTENT = b"g" * (5 * artifactstore.CHUNK_BYTES)
CHUNKS_SENT = 3
# Far above any honest pace of a purge that is not held (a few requests on a loaded machine).
PURGE_ENDS_WITHIN = 60.0
# Without the purge's wait an upload left a chunk once in twenty to once in two (by the load):
# a hundred (a few ms each) make a run that passes without the wait very unlikely.
UPLOADS = 100


def stopped_after_chunks_sent() -> Callable[[], bool]:
    """``should_stop`` for ``put_file``: true once ``CHUNKS_SENT`` chunks were sent (it is asked
    once before the attempt, then before each chunk)."""
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > CHUNKS_SENT + 1

    return should_stop


async def _upload_given_up(js: JetStreamContext, names: Names, object_name: str) -> None:
    with pytest.raises(artifactstore.UploadStopped):
        await artifactstore.put_file(
            js, names, object_name, io.BytesIO(CONTENT), len(CONTENT), stopped_after_chunks_sent()
        )


async def _purges_ended(before: set[asyncio.Task[None]]) -> None:
    """The purges started since ``before`` (``set(artifactstore._PURGES)`` then) are over. Not
    all of them: the session's event loop may still run another test's, held by its fault."""
    async with asyncio.timeout(PURGE_ENDS_WITHIN):
        await asyncio.gather(*(artifactstore._PURGES - before))


async def _chunks_stored(js: JetStreamContext, names: Names) -> int:
    """The bucket's messages: only chunks here (no upload got a description)."""
    return (await js.stream_info(artifactstore.stream_name(names))).state.messages


async def test_an_upload_given_up_mid_pipeline_leaves_no_chunk(
    js: JetStreamContext, settings: Settings
) -> None:
    """A hundred uploads, each stopped with three chunks in flight: once their purges are over,
    the bucket holds nothing. Before, one upload in twenty to one in two (by the machine's
    load) left a chunk or more: twenty uploads all passed about one run in ten."""
    names = Names(settings.prefix)
    for n in range(UPLOADS):
        before = set(artifactstore._PURGES)
        await _upload_given_up(js, names, f"out/given-up-{n}.bin")
        await _purges_ended(before)
        assert await _chunks_stored(js, names) == 0, f"upload {n} left chunks"


async def test_a_purge_cancelled_before_it_began_abandons_the_acks_it_was_to_wait_for(
    js: JetStreamContext, settings: Settings
) -> None:
    """A given-up upload's purge cancelled before its task ran a step (in the step that
    started it, as ``asyncio.run``'s end cancels every task): the acks of the chunks in flight
    are abandoned all the same (their ack inbox entries go), not left waiting with the
    connection for as long as it lives. (``stop_purges`` yields once before its cancel: the
    task has begun by then.)"""
    names = Names(settings.prefix)
    subject = f"unanswered.{settings.prefix}"  # in no stream: a subscriber takes it, no ack
    unanswering = await js._nc.subscribe(subject)
    inbox = ackinbox.of(js._nc)
    acks = [await inbox.publish_pipelined(subject, b"chunk", None) for _ in range(CHUNKS_SENT)]
    before = set(artifactstore._PURGES)
    artifactstore.purge_later(js, names, "cancelledbeforeitbegan", list(acks))
    (purge,) = artifactstore._PURGES - before
    purge.cancel()
    await asyncio.gather(purge, return_exceptions=True)
    await unanswering.unsubscribe()
    assert all(ack.cancelled() for ack in acks), "an ack left waiting after its purge ended"


# The purge's wait for the acks in this test (``ACK_WAIT_SECONDS``), and the acks held 5 s under
# and over it: margins a loaded machine's pauses fit in, and a purge that waits for nothing, or
# for ever, does not.
ACKS_WAITED_FOR = 10.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("held", "waited_for"),
    [(ACKS_WAITED_FOR - 5.0, True), (ACKS_WAITED_FOR + 5.0, False)],
    ids=["acks-held-shorter-than-the-bound", "acks-held-longer"],
)
async def test_the_purge_waits_for_the_chunks_acks_at_most_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: float, waited_for: bool
) -> None:
    """The acks of the chunks in flight held (the server stored them; a real nats-server behind
    a proxy that holds what it sends): for less than ``ACK_WAIT_SECONDS`` (10 s here) the purge
    waits for them and then leaves nothing; for longer it is sent once the bound is over (the
    chunks gone while the acks are still held), not left waiting for ever."""
    monkeypatch.setattr(artifactstore, "ACK_WAIT_SECONDS", ACKS_WAITED_FOR)
    async with restartable(tmp_path) as running:
        names: Names = running.names
        js = running.nc.jetstream()
        direct = await nats.connect(f"nats://127.0.0.1:{running.server.port}")
        try:
            seen = direct.jetstream()  # the bucket as seen past the proxy
            running.proxy.arm(artifactstore.chunk_subject(names, ""), prefix=True)
            before = set(artifactstore._PURGES)
            await _upload_given_up(js, names, "out/held.bin")
            assert await running.proxy.stored(), "no chunk stored"
            if waited_for:
                await asyncio.sleep(held)  # the fault: the acks held this long
                stored = await _chunks_stored(seen, names)
                assert stored == CHUNKS_SENT, "the purge was sent before the chunks' acks came"
                running.proxy.release()
            else:
                async with asyncio.timeout(held):
                    while await _chunks_stored(seen, names):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)  # purged, the acks still held
                running.proxy.release()
            await _purges_ended(before)
            assert await _chunks_stored(seen, names) == 0
        finally:
            await direct.close()
