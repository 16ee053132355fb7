"""The pending-purge records (``artifactpurges``) against a real NATS: content the name serves is
never purged (its record goes), garbage is purged once due and unread, and a purge is taken by one
sweep only (a compare-and-set of the record's revision)."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactpurges, artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System

GRACE = 6.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The system's own API sweeps only at its start: these tests drive the sweep themselves.
    return msgspec.structs.replace(settings, artifact_purge_sweep_seconds=3600.0)


@pytest.fixture
async def js(system: System) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(system.settings, "tests-purges")
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def _store(js: JetStreamContext, names: Names, object_name: str, data: bytes) -> str:
    stored = await artifactstore.put_file(
        js, names, object_name, io.BytesIO(data), len(data), lambda: False
    )
    return stored.nuid


async def _has_chunks(js: JetStreamContext, names: Names, nuid: str) -> bool:
    try:
        await js.get_last_msg(
            artifactstore.stream_name(names), artifactstore.chunk_subject(names, nuid)
        )
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _put(js: JetStreamContext, names: Names, nuid: str, purge: Any) -> None:
    kv = await js.key_value(names.artifact_purges_bucket)
    await kv.put(nuid, msgspec.json.encode(purge))


async def _recorded(js: JetStreamContext, names: Names, nuid: str) -> bool:
    kv = await js.key_value(names.artifact_purges_bucket)
    try:
        await kv.get(nuid)
    except nats.js.errors.KeyNotFoundError:
        return False
    return True


def _past(confirmed: bool, object_name: str) -> artifactpurges.PendingPurge:
    """Due long enough ago for the sweep to act (a confirmed one: a grace past its due)."""
    return artifactpurges.PendingPurge(object_name, time.time() - 3 * GRACE, confirmed)


async def test_served_content_is_never_purged(system: System, js: JetStreamContext) -> None:
    """A record past its due whose content the name serves: the record goes, the chunks stay,
    whether it was confirmed or not (a description stored late)."""
    names = Names(system.settings.prefix)
    for confirmed in (False, True):
        object_name = f"purgetest/served-{confirmed}"
        nuid = await _store(js, names, object_name, b"s" * 300_000)
        await _put(js, names, nuid, _past(confirmed, object_name))
        await artifactpurges.sweep(js, names, GRACE)
        assert not await _recorded(js, names, nuid), confirmed
        assert await _has_chunks(js, names, nuid), confirmed


async def test_garbage_is_confirmed_then_purged(system: System, js: JetStreamContext) -> None:
    """Content the name does not serve: an unconfirmed record past its due is confirmed (due a
    grace from now: not purged yet), and once that is a grace past, purged and forgotten."""
    names = Names(system.settings.prefix)
    object_name = "purgetest/garbage"
    old = await _store(js, names, object_name, b"o" * 300_000)
    await _store(js, names, object_name, b"n" * 300_000)  # the name now serves this
    await _put(js, names, old, _past(False, object_name))
    await artifactpurges.sweep(js, names, GRACE)
    assert await _recorded(js, names, old)
    assert await _has_chunks(js, names, old), "purged without a grace after it was seen replaced"
    await _put(js, names, old, _past(True, object_name))  # as if two graces had passed
    await artifactpurges.sweep(js, names, GRACE)
    assert not await _has_chunks(js, names, old)
    assert not await _recorded(js, names, old)


async def test_a_purge_is_taken_by_one_sweep(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweeps read the same revision of a due record: the first takes it (and looks for
    readers), the second's compare-and-set fails and it leaves the record alone."""
    names = Names(system.settings.prefix)
    object_name = "purgetest/taken"
    old = await _store(js, names, object_name, b"o" * 300_000)
    await _store(js, names, object_name, b"n" * 300_000)
    await _put(js, names, old, _past(True, object_name))
    kv = await js.key_value(names.artifact_purges_bucket)
    seen = await kv.get(old)
    assert seen.revision is not None
    assert seen.value is not None
    looked: list[str] = []
    being_read = artifactstore.being_read

    async def counted(js: JetStreamContext, names: Names, nuid: str) -> bool:
        looked.append(nuid)
        return await being_read(js, names, nuid)

    monkeypatch.setattr(artifactstore, "being_read", counted)
    for _ in range(2):  # both with the revision read before either wrote
        await artifactpurges._settle(js, names, kv, old, seen.revision, seen.value, GRACE)
    assert looked == [old]
    assert not await _has_chunks(js, names, old)


async def test_a_record_jobrunner_did_not_write_is_dropped(
    system: System, js: JetStreamContext
) -> None:
    names = Names(system.settings.prefix)
    kv = await js.key_value(names.artifact_purges_bucket)
    await kv.put("notours", b"not json")
    await artifactpurges.sweep(js, names, GRACE)
    assert not await _recorded(js, names, "notours")
