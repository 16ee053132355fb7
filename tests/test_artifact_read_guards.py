"""The ZIP archive's guards (``artifactstore.ReadGuards``) against a real NATS: every member's
content counts as read for the replaced-content purge from its description on, with one guard
consumer per ``GUARD_SUBJECTS`` members, and none once dropped; and the scan of the consumer
list (``_being_read``) sees a reader that a deletion between two pages moved."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext, api

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System


async def test_every_member_is_read_until_the_guards_are_dropped(system: System) -> None:
    names = Names(system.settings.prefix)
    nc = await eventstore.connect(system.settings, "tests-guards")
    try:
        js = nc.jetstream()
        stream = artifactstore.stream_name(names)
        members = artifactstore.GUARD_SUBJECTS + 5
        nuids = [f"guardtest{i}" for i in range(members)]
        guards = artifactstore.ReadGuards(js, names, 1.0)
        for nuid in nuids:
            await guards.add(api.ObjectInfo(name=nuid, bucket=names.artifacts_bucket, nuid=nuid))
        subject = artifactstore.chunk_subject
        for nuid in (nuids[0], nuids[artifactstore.GUARD_SUBJECTS - 1], nuids[-1]):
            assert await artifactstore._being_read(js, names, subject(names, nuid)), nuid
        assert not await artifactstore._being_read(js, names, subject(names, "other"))
        ours = [c for c in await js.consumers_info(stream) if c.name.startswith("guard-")]
        assert len(ours) == 2
        await guards.drop()
        for nuid in (nuids[0], nuids[-1]):
            assert not await artifactstore._being_read(js, names, subject(names, nuid)), nuid
    finally:
        await nc.close()


async def test_a_reader_moved_onto_a_page_already_read_is_seen(
    js: JetStreamContext, settings: Settings
) -> None:
    """257 consumers, the reader's name sorting last; one other deleted after the first page
    (256) is read moves the reader to index 255 and leaves the page at 256 empty: the scan
    must not trust that (the counts before and after differ) and finds it on the next one."""
    names = Names(settings.prefix)
    stream = artifactstore.stream_name(names)
    subject = artifactstore.chunk_subject
    pads = artifactstore.LIST_PAGE
    for i in range(pads):
        config = api.ConsumerConfig(
            name=f"pad{i:04d}", filter_subject=subject(names, f"pad{i}"), inactive_threshold=60.0
        )
        await js.add_consumer(stream, config)
    reader = subject(names, "readtest")
    config = api.ConsumerConfig(name="zzz-reader", filter_subject=reader, inactive_threshold=60.0)
    await js.add_consumer(stream, config)
    listing = js.consumers_info
    first_pages: list[list[str]] = []

    async def deleting_after_the_first_page(stream: str, offset: int | None = None) -> Any:
        page = await listing(stream, offset=offset)
        if not offset and not first_pages:
            first_pages.append([c.name for c in page])
            await js.delete_consumer(stream, "pad0000")
        return page

    js.consumers_info = deleting_after_the_first_page  # type: ignore[method-assign]
    assert await artifactstore._being_read(js, names, reader)
    assert len(first_pages[0]) == pads
    assert "zzz-reader" not in first_pages[0]
