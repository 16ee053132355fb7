"""The ZIP archive's guards (``artifactstore.ReadGuards``) against a real NATS: every member's
content counts as read for the replaced-content purge from its description on, with one guard
consumer per ``GUARD_SUBJECTS`` members, and none once dropped."""

from __future__ import annotations

from nats.js import api

from jobrunner.common import artifactstore, eventstore
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
        subject = artifactstore._chunk_subject
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
