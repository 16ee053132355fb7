"""The pending-purge records (``artifactpurges``) against a real NATS: content the name serves is
never purged (its record goes), garbage is purged once due and unread, and a purge is taken by one
sweep only (a compare-and-set of the record's revision)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactpurges, artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System

GRACE = 6.0
# artifact_upload_window_seconds: the default, and a short one for the tests that wait for it.
DEFAULT_WINDOW = Settings().artifact_upload_window_seconds
WINDOW = 3.0


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


async def _bucket_messages(js: JetStreamContext, names: Names) -> int:
    """What the purges bucket holds: records and any marker a deleted one left."""
    info = await js.stream_info(f"KV_{names.artifact_purges_bucket}")
    return info.state.messages


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
    assert await _bucket_messages(js, names) == 0, "the record left a marker"


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
        await artifactpurges._settle(js, names, old, seen.revision, seen.value, GRACE)
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


class RecordsStalledBeforeFence(artifactpurges.UploadRecords):
    """The upload's real records; its API stalls (``go``) right before the fence."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.attempts: list[str] = []
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def attempt(self, nuid: str) -> None:
        self.attempts.append(nuid)
        await super().attempt(nuid)

    async def describing(self, nuid: str) -> None:
        self.reached.set()
        await self.go.wait()
        await super().describing(nuid)


async def test_an_upload_whose_api_stalls_past_the_window_is_refused_and_the_name_kept(
    system: System, js: JetStreamContext
) -> None:
    """The API stalls between its last chunk and its description for longer than the window
    and two graces (100 s with the defaults; 3 s and 2 x 1 s here): another API's sweep finds
    the name not serving the attempt, confirms it, then purges it. When the stalled API resumes,
    its fence (a compare-and-set of the attempt's record) fails: the upload is given up (the
    worker gets 503 and sends it again) and the name still serves its earlier content, whole.
    Before the fence the description was stored: the name served content without chunks."""
    grace = 1.0
    names = Names(system.settings.prefix)
    object_name = "purgetest/stalled"
    first = await _store(js, names, object_name, b"P" * 300_000)
    records = RecordsStalledBeforeFence(js, names, object_name, first, WINDOW)
    data = b"X" * 400_000
    upload = asyncio.create_task(
        artifactstore.put_file(
            js,
            names,
            object_name,
            io.BytesIO(data),
            len(data),
            lambda: False,
            replaces=first,
            records=records,
        )
    )
    await asyncio.wait_for(records.reached.wait(), 10)
    async with asyncio.timeout(20):  # another API sweeps every half second meanwhile
        while await _has_chunks(js, names, records.attempts[-1]):
            await artifactpurges.sweep(js, names, grace)
            await asyncio.sleep(0.5)
    records.go.set()  # the API resumes
    with pytest.raises(artifactstore.AttemptTaken):
        await asyncio.wait_for(upload, 10)
    served = await artifactstore.object_info(js, names, object_name)
    assert served.nuid == first, "the stalled upload's description was stored"
    assert await _has_chunks(js, names, first)


async def test_a_stall_before_the_fence_shorter_than_the_window_stores_the_upload(
    system: System, js: JetStreamContext
) -> None:
    """The same stall, shorter than the window: the sweeps leave the attempt (not due yet), the
    fence passes and the name serves the new content, whole; its record goes once the window
    is over (the name serves it)."""
    grace = 1.0
    names = Names(system.settings.prefix)
    object_name = "purgetest/stalled-briefly"
    first = await _store(js, names, object_name, b"P" * 300_000)
    records = RecordsStalledBeforeFence(js, names, object_name, first, WINDOW)
    data = b"X" * 400_000
    upload = asyncio.create_task(
        artifactstore.put_file(
            js, names, object_name, io.BytesIO(data), len(data), lambda: False, first, records
        )
    )
    await asyncio.wait_for(records.reached.wait(), 10)
    for _ in range(3):  # 1.5 s of the 3 s window
        await artifactpurges.sweep(js, names, grace)
        await asyncio.sleep(0.5)
    records.go.set()
    stored = await asyncio.wait_for(upload, 10)
    assert (await artifactstore.object_info(js, names, object_name)).nuid == stored.nuid
    assert await _has_chunks(js, names, stored.nuid)
    async with asyncio.timeout(20):
        while await _recorded(js, names, stored.nuid):
            await artifactpurges.sweep(js, names, grace)
            await asyncio.sleep(0.5)
    assert await _has_chunks(js, names, stored.nuid)
    assert await _has_chunks(js, names, first) or not await _recorded(js, names, first)


async def test_a_purged_replaced_content_leaves_nothing_to_sweep(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once replaced content is purged its record is gone without a trace: a later pass makes
    no request for it. (A deleted KV record left a marker for ever with the default max age,
    which every pass of every API read again.)"""
    names = Names(system.settings.prefix)
    object_name = "purgetest/done"
    for _ in range(20):
        old = await _store(js, names, object_name, b"o" * 1000)
        await _store(js, names, object_name, b"n" * 1000)
        artifactstore.purge_when_unread(js, names, old, 0.1, object_name)
    async with asyncio.timeout(30):
        while artifactstore._REPLACED_PURGES:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    reads = 0
    get_last_msg = js.get_last_msg

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await get_last_msg(*args, **kwargs)

    monkeypatch.setattr(js, "get_last_msg", counted)
    kv = await js.key_value(names.artifact_purges_bucket)
    kv_get = type(kv).get

    async def kv_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await kv_get(self, *args, **kwargs)

    monkeypatch.setattr(type(kv), "get", kv_counted)
    await artifactpurges.sweep(js, names, GRACE)
    assert reads == 0, f"a pass over no pending purge read {reads} records"
    assert await _bucket_messages(js, names) == 0


async def test_a_chunk_stored_after_a_given_up_attempt_was_purged_goes_too(
    system: System, js: JetStreamContext
) -> None:
    """An upload stopped mid-chunks (its patience over): its chunks are purged at once, but a
    chunk may be stored after that purge (one whose ack did not come within the purge's wait:
    JetStream orders a stream's messages and its API requests apart). The attempt's record
    stays, so the sweep purges again once the window is over and nothing is left. (Removing the
    record with the first purge, as the review's nit asked, left such a chunk for ever.)"""
    names = Names(system.settings.prefix)
    object_name = "purgetest/given-up"
    records = RecordsStalledBeforeFence(js, names, object_name, None, WINDOW)
    asked = 0

    def stop_after_some_chunks() -> bool:
        nonlocal asked
        asked += 1
        return asked > 4

    data = b"g" * 2_000_000
    before = set(artifactstore._PURGES)  # another test's may still be running: not waited for
    with pytest.raises(artifactstore.UploadStopped):
        await artifactstore.put_file(
            js,
            names,
            object_name,
            io.BytesIO(data),
            len(data),
            stop_after_some_chunks,
            None,
            records,
        )
    attempt = records.attempts[-1]
    # The purge at once over. (Waiting for the attempt to have no chunks assumed that purge ran
    # after every chunk in flight was stored: it did not, about once in 15 runs, more under load.)
    async with asyncio.timeout(60):  # a few requests: far above their pace on a loaded machine
        await asyncio.gather(*(artifactstore._PURGES - before))
    # A chunk stored after that purge (made certain here).
    await js.publish(artifactstore.chunk_subject(names, attempt), b"late")
    async with asyncio.timeout(60):  # the window (3 s) and two graces (1 s): far above them
        while await _recorded(js, names, attempt):
            await artifactpurges.sweep(js, names, 1.0)
            await asyncio.sleep(0.5)
    assert not await _has_chunks(js, names, attempt), "a chunk of the attempt was left"
    assert await _bucket_messages(js, names) == 0


async def test_a_pending_purge_past_a_page_of_records_is_listed(
    system: System, js: JetStreamContext
) -> None:
    """The server details 100,000 subjects in one stream info answer: a record past the first
    page is listed too (the sweep asks page by page)."""
    names = Names(system.settings.prefix)
    subject = f"$KV.{names.artifact_purges_bucket}."
    count = artifactpurges.SERVER_SUBJECTS_PAGE + 100
    for start in range(0, count, 2000):
        acks = [
            await js.publish_async(subject + f"{i:032x}", b"", headers={"KV-Operation": "DEL"})
            for i in range(start, min(count, start + 2000))
        ]
        await asyncio.gather(*acks)
    await artifactpurges.record(js, names, "f" * 32, "purgetest/late", DEFAULT_WINDOW)
    keys = await artifactpurges._keys(js, names)
    assert "f" * 32 in keys
    assert len(keys) == count + 1


async def test_one_unreadable_record_does_not_stop_the_others(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key nats-py's KV refuses ('@': a foreign publish on the bucket's subjects) is dropped
    like any foreign record, and a record whose settling fails (here: the reader check) is
    logged and left for the next pass: the records listed after either are settled all the
    same. Before, either raised out of the pass at every pass (keys sort)."""
    names = Names(system.settings.prefix)
    await js.publish(f"$KV.{names.artifact_purges_bucket}.0@foreign", b"x")
    object_name = "purgetest/after-a-failure"
    failing = await _store(js, names, object_name, b"f" * 1000)
    garbage = await _store(js, names, object_name, b"g" * 1000)
    await _store(js, names, object_name, b"n" * 1000)  # the name serves neither
    failing, garbage = sorted((failing, garbage))  # the failing one is listed first
    for nuid in (failing, garbage):
        await _put(js, names, nuid, _past(True, object_name))
    being_read = artifactstore.being_read

    async def fails_for_one(js: JetStreamContext, names: Names, nuid: str) -> bool:
        if nuid == failing:
            raise RuntimeError("this record's own failure")
        return await being_read(js, names, nuid)

    monkeypatch.setattr(artifactstore, "being_read", fails_for_one)
    await artifactpurges.sweep(js, names, GRACE)
    assert not await _has_chunks(js, names, garbage), "the record after the failure not settled"
    assert await _has_chunks(js, names, failing)
    assert "0@foreign" not in await artifactpurges._keys(js, names)


async def test_the_bucket_follows_a_changed_max_age(system: System, js: JetStreamContext) -> None:
    """Started again with another ``stream_max_age_days``, the purges bucket gets that max age
    (like the artifacts bucket; a record has no use once its chunks aged out), to none and
    back; several services starting at once on a new deployment all find it made."""
    names = Names("purgesage")
    base = system.settings
    await asyncio.gather(
        *(
            artifactpurges.ensure_bucket(
                js, names, msgspec.structs.replace(base, stream_max_age_days=days)
            )
            for days in (1.0, 1.0, 2.0)
        )
    )
    for days in (3.0, 0.0, 1.5):
        settings = msgspec.structs.replace(base, stream_max_age_days=days)
        await artifactpurges.ensure_bucket(js, names, settings)
        info = await js.stream_info(f"KV_{names.artifact_purges_bucket}")
        assert abs((info.config.max_age or 0.0) - days * 86400) < 1e-3, days
    await js.delete_stream(f"KV_{names.artifact_purges_bucket}")


def lose_the_descriptions_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """The description is published for real, but its ack is lost (a NATS that answered after
    the publish's wait): the publish raises a timeout once the description is stored."""
    describe = artifactstore._describe

    async def ack_lost(*args: Any) -> None:
        await describe(*args)
        raise nats.errors.TimeoutError

    monkeypatch.setattr(artifactstore, "_describe", ack_lost)


async def test_a_description_stored_without_its_ack_keeps_its_content(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The description's ack never came, but NATS stored it, and the upload's patience is over
    (503): the name serves that content, so its chunks must stay. They are left to the sweep,
    which finds the name serving them once the window is over and only drops the record.
    Before, the attempt was purged at once: the name served content without chunks."""
    monkeypatch.setattr(artifactpurges, "DESCRIBING_WINDOW_SECONDS", 3.0)
    monkeypatch.setattr(artifactstore, "ACK_WAIT_SECONDS", 1.0)
    names = Names(system.settings.prefix)
    object_name = "purgetest/ack-lost"
    records = RecordsStalledBeforeFence(js, names, object_name, None, DEFAULT_WINDOW)
    records.go.set()
    lose_the_descriptions_ack(monkeypatch)

    def stop_once_failed() -> bool:
        return records.reached.is_set()  # asked again after the description's failure

    data = b"a" * 300_000
    with pytest.raises(artifactstore.UploadStopped):
        await artifactstore.put_file(
            js,
            names,
            object_name,
            io.BytesIO(data),
            len(data),
            stop_once_failed,
            None,
            records,
        )
    served = await artifactstore.object_info(js, names, object_name)
    assert served.nuid == records.attempts[-1]
    async with asyncio.timeout(20):
        while await _recorded(js, names, served.nuid):
            await artifactpurges.sweep(js, names, 1.0)
            await asyncio.sleep(0.5)
    assert await _has_chunks(js, names, served.nuid), "the served content was purged"


async def test_nats_not_answering_ends_the_pass(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request timing out (NATS paused or away) ends the pass at once, raised (the sweeper
    logs it and tries again next period): the records after it are not each left to wait their
    own timeout. Before, every remaining record waited its 5 s and logged a warning."""
    names = Names(system.settings.prefix)
    object_name = "purgetest/nats-away"
    first = await _store(js, names, object_name, b"f" * 1000)
    second = await _store(js, names, object_name, b"s" * 1000)
    await _store(js, names, object_name, b"n" * 1000)  # the name serves neither
    first, second = sorted((first, second))
    for nuid in (first, second):
        await _put(js, names, nuid, _past(True, object_name))
    looked_at: list[str] = []

    async def nats_away(js: JetStreamContext, names: Names, nuid: str) -> bool:
        looked_at.append(nuid)
        raise nats.errors.TimeoutError

    monkeypatch.setattr(artifactstore, "being_read", nats_away)
    with pytest.raises(nats.errors.TimeoutError):
        await artifactpurges.sweep(js, names, GRACE)
    assert looked_at == [first], "the pass went on after NATS did not answer"


async def test_remove_keeps_a_newer_record(system: System, js: JetStreamContext) -> None:
    """remove(revision) purges the subject up to that revision only: a record written since
    (an upload's fence writing the replaced content's record again while a sweep found it
    served) stays. (The reviewer's test.)"""
    names = Names(system.settings.prefix)
    nuid = "e" * 32
    old = await artifactpurges.record(js, names, nuid, "purgetest/newer", DEFAULT_WINDOW)
    new = await artifactpurges.record(js, names, nuid, "purgetest/newer", DEFAULT_WINDOW)
    await artifactpurges.remove(js, names, nuid, old)
    assert await _recorded(js, names, nuid), "the newer record was removed"
    await artifactpurges.remove(js, names, nuid, new)
    assert not await _recorded(js, names, nuid)


async def test_a_sweep_that_found_the_replaced_content_served_keeps_the_fence_record(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep reads P's unconfirmed record past due and the name serving P; an upload's fence
    then writes P's record again; the sweep removes the revision it read. P's newer record
    stays (its upload may die before its confirm). (The reviewer's test.)"""
    names = Names(system.settings.prefix)
    object_name = "purgetest/fence-vs-live"
    first = await _store(js, names, object_name, b"P" * 1000)
    await artifactpurges.record(js, names, first, object_name, -1.0)  # written past due
    served_nuid = artifactpurges._served_nuid

    async def fence_meanwhile(js_: Any, names_: Any, object_name_: str) -> Any:
        answer = await served_nuid(js_, names_, object_name_)
        await artifactpurges.record(js, names, first, object_name, 80.0)  # the fence's rewrite
        return answer

    monkeypatch.setattr(artifactpurges, "_served_nuid", fence_meanwhile)
    await artifactpurges.sweep(js, names, 1.0)
    assert await _recorded(js, names, first), "the fence's record of the replaced content went"


class StalledDescription:
    """A pass-through of ``artifactstore._describe`` that stalls (``go``) before sending: the
    API's event loop stalled, or the API SIGSTOPped, after its fence."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()
        self._describe = artifactstore._describe
        monkeypatch.setattr(artifactstore, "_describe", self.describe)

    async def describe(self, *args: Any) -> None:
        self.reached.set()
        await self.go.wait()
        await self._describe(*args)


async def _stalled_upload(
    js: JetStreamContext, names: Names, object_name: str, first: str
) -> tuple[RecordsStalledBeforeFence, asyncio.Task[Any]]:
    records = RecordsStalledBeforeFence(js, names, object_name, first, WINDOW)
    records.go.set()  # no stall before the fence
    data = b"X" * 400_000
    upload = asyncio.create_task(
        artifactstore.put_file(
            js, names, object_name, io.BytesIO(data), len(data), lambda: False, first, records
        )
    )
    return records, upload


async def test_a_stall_after_the_fence_past_the_upload_window_stores_the_upload(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API stalls after its fence, before the description is sent, for longer than the
    upload window and two graces (3 s and 2 x 1 s here; 100 s with the defaults) while another
    API sweeps: the fence made both records due a describing window (an hour) on, so the sweep
    leaves the attempt's chunks and the replaced content's record. Once the API resumes the
    name serves the new content, whole, and the earlier content is still recorded (purged by
    the sweep should this API die before its own purge). Before, the sweep purged the attempt
    and dropped the earlier content's record: the name served content without chunks, and the
    earlier content leaked."""
    grace = 1.0
    names = Names(system.settings.prefix)
    object_name = "purgetest/stall-after-fence"
    first = await _store(js, names, object_name, b"P" * 300_000)
    stall = StalledDescription(monkeypatch)
    records, upload = await _stalled_upload(js, names, object_name, first)
    await asyncio.wait_for(stall.reached.wait(), 10)
    for _ in range(14):  # 7 s: past the window and two graces, another API sweeping
        await artifactpurges.sweep(js, names, grace)
        await asyncio.sleep(0.5)
    stall.go.set()
    stored = await asyncio.wait_for(upload, 10)
    served = await artifactstore.object_info(js, names, object_name)
    assert served.nuid == stored.nuid == records.attempts[-1]
    assert await _has_chunks(js, names, served.nuid), "the name serves purged content"
    assert await _recorded(js, names, first), "the earlier content is no longer recorded"


async def test_a_stall_after_the_fence_past_the_describing_window_is_refused(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same stall, longer than the describing window (3 s here, an hour with the
    defaults): the sweep purges the attempt and drops the replaced content's record (the name
    still served it); the description, sent anyway, is stored. The upload then finds the name
    serving its attempt with no chunks: 503 (the worker sends the file again), and the earlier
    content recorded again so the sweep purges it. Before, 201 for a name serving nothing
    readable, and the earlier content leaked."""
    monkeypatch.setattr(artifactpurges, "DESCRIBING_WINDOW_SECONDS", 3.0)
    grace = 1.0
    names = Names(system.settings.prefix)
    object_name = "purgetest/stall-past-describing"
    first = await _store(js, names, object_name, b"P" * 300_000)
    stall = StalledDescription(monkeypatch)
    records, upload = await _stalled_upload(js, names, object_name, first)
    await asyncio.wait_for(stall.reached.wait(), 10)
    async with asyncio.timeout(20):  # another API sweeps every half second meanwhile
        while await _has_chunks(js, names, records.attempts[-1]) or await _recorded(
            js, names, first
        ):
            await artifactpurges.sweep(js, names, grace)
            await asyncio.sleep(0.5)
    stall.go.set()
    with pytest.raises(artifactstore.AttemptTaken):
        await asyncio.wait_for(upload, 10)
    assert await _recorded(js, names, first), "the earlier content is neither served nor recorded"


async def test_an_upload_replaced_and_purged_after_its_ack_is_not_refused(
    system: System, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's description is acknowledged; before A's chunk check runs (its API slowed by more
    than a grace), B stores the name and purges A's content as replaced (B read A's content as
    the previous one). A's upload succeeded and was legitimately replaced: it is not refused
    (a 503 would make the worker's resend overwrite B's newer content with A's). Before, it
    was. (The reviewer's test.)"""
    names = Names(system.settings.prefix)
    object_name = "purgetest/replaced-before-check"
    has_chunks = artifactstore.has_chunks

    async def replaced_meanwhile(js_: Any, names_: Any, nuid: str) -> bool:
        await _store(js, names, object_name, b"B" * 1000)  # B: its previous is A's content
        artifactstore.purge_when_unread(js, names, nuid, 0.1, object_name)
        async with asyncio.timeout(20):
            while nuid in artifactstore._REPLACED_PURGES:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return await has_chunks(js_, names_, nuid)

    monkeypatch.setattr(artifactstore, "has_chunks", replaced_meanwhile)
    records = artifactpurges.UploadRecords(js, names, object_name, None, DEFAULT_WINDOW)
    data = b"A" * 300_000
    stored = await artifactstore.put_file(
        js, names, object_name, io.BytesIO(data), len(data), lambda: False, None, records
    )
    assert not await has_chunks(js, names, stored.nuid)  # purged as replaced, as it should


async def test_replaced_content_is_purged_a_window_after_its_api_died_past_the_ack(
    system: System, js: JetStreamContext
) -> None:
    """The upload's description is acknowledged and its API dies before its own purge of the
    replaced content starts (here: ``put_file`` alone, nothing after it). The fence had made the
    replaced content's record due an hour on; once acknowledged it is due a window on again,
    so the sweep purges that content within the window and two graces (3 s and 2 x 1 s here).
    Without that it waited the hour."""
    names = Names(system.settings.prefix)
    object_name = "purgetest/died-after-ack"
    first = await _store(js, names, object_name, b"P" * 300_000)
    records = artifactpurges.UploadRecords(js, names, object_name, first, WINDOW)
    data = b"X" * 300_000
    stored = await artifactstore.put_file(
        js, names, object_name, io.BytesIO(data), len(data), lambda: False, first, records
    )
    async with asyncio.timeout(20):
        while await _has_chunks(js, names, first):
            await artifactpurges.sweep(js, names, 1.0)
            await asyncio.sleep(0.5)
    assert await _has_chunks(js, names, stored.nuid)


async def test_a_pass_ends_before_its_next_record_once_stopped(
    system: System, js: JetStreamContext
) -> None:
    """The API's stop ends a pass between records (its shutdown does not wait for the rest):
    what the pass leaves stays recorded for the next one."""
    names = Names(system.settings.prefix)
    nuids = []
    for n in range(2):
        object_name = f"purgetest/stopped-{n}"
        nuid = await _store(js, names, object_name, b"s" * 1000)
        await _put(js, names, nuid, _past(False, object_name))
        nuids.append(nuid)
    stop = asyncio.Event()
    stop.set()
    await artifactpurges.sweep(js, names, GRACE, stop)
    assert [await _recorded(js, names, nuid) for nuid in nuids] == [True, True]
    await artifactpurges.sweep(js, names, GRACE)
    assert [await _recorded(js, names, nuid) for nuid in nuids] == [False, False]


class RecordsWrittenSlowly(artifactpurges.UploadRecords):
    """The upload's real records; its API takes ``pause`` before each chunk (a slow NATS, a busy
    API), and ``stall`` more before chunk number ``stall_at``."""

    def __init__(self, *args: Any, pause: float, stall: float = 0.0, stall_at: int = 3) -> None:
        super().__init__(*args)
        self.pause, self.stall, self.stall_at = pause, stall, stall_at
        self.chunks = 0

    async def writing(self, nuid: str) -> None:
        self.chunks += 1
        await asyncio.sleep(self.pause + (self.stall if self.chunks == self.stall_at else 0.0))
        await super().writing(nuid)


async def _upload_while_sweeping(
    js: JetStreamContext, names: Names, object_name: str, records: RecordsWrittenSlowly, size: int
) -> artifactstore.StoredObject:
    """``put_file`` through ``records`` while another API sweeps every 0.2 s (a 1 s grace)."""

    async def sweeping() -> None:
        while True:
            await artifactpurges.sweep(js, names, 1.0)
            await asyncio.sleep(0.2)

    sweeper = asyncio.create_task(sweeping())
    try:
        return await artifactstore.put_file(
            js,
            names,
            object_name,
            io.BytesIO(b"N" * size),
            size,
            lambda: False,
            records._replaces,
            records,
        )
    finally:
        sweeper.cancel()


async def test_an_upload_storing_for_several_windows_is_stored(
    system: System, js: JetStreamContext
) -> None:
    """Storing the chunks takes three windows (30 chunks, 0.1 s each, a 1 s window) while
    another API sweeps: the attempt's record is renewed as its chunks are written, so the
    window bounds a silent API, not an upload's length; the name serves the new content,
    whole. Before, the sweep confirmed the attempt a window after its first chunk and every
    such upload was refused 503."""
    names = Names(system.settings.prefix)
    object_name = "purgetest/stored-slowly"
    first = await _store(js, names, object_name, b"P" * 300_000)
    records = RecordsWrittenSlowly(js, names, object_name, first, 1.0, pause=0.1)
    size = 30 * artifactstore.CHUNK_BYTES
    stored = await asyncio.wait_for(
        _upload_while_sweeping(js, names, object_name, records, size), 60
    )
    assert records.chunks == 30
    served = await artifactstore.object_info(js, names, object_name)
    assert served.nuid == stored.nuid
    assert stored.size == size
    assert await _has_chunks(js, names, stored.nuid)


@pytest.mark.parametrize(
    ("stall", "stored"),
    [(WINDOW / 3, True), (WINDOW * 1.5, False)],
    ids=["third-of-window", "window-and-a-half"],
)
async def test_an_api_silent_between_two_chunks_past_the_window_loses_the_attempt(
    system: System, js: JetStreamContext, stall: float, stored: bool
) -> None:
    """The API stalls between two chunks while another API sweeps. A third of the window (3 s
    here): at most two thirds since the record's last renewal, the sweep leaves it and the
    upload is stored. A window and a half: the sweep confirms the attempt as garbage, the
    renewal's compare-and-set fails and the upload is given up (503, the worker sends it
    again); the name still serves its earlier content."""
    names = Names(system.settings.prefix)
    object_name = f"purgetest/silent-{int(stall * 10)}"
    first = await _store(js, names, object_name, b"P" * 300_000)
    records = RecordsWrittenSlowly(js, names, object_name, first, WINDOW, pause=0.0, stall=stall)
    size = 6 * artifactstore.CHUNK_BYTES
    upload = _upload_while_sweeping(js, names, object_name, records, size)
    if stored:
        new = await asyncio.wait_for(upload, 30)
        assert (await artifactstore.object_info(js, names, object_name)).nuid == new.nuid
        assert await _has_chunks(js, names, new.nuid)
    else:
        with pytest.raises(artifactstore.AttemptTaken):
            await asyncio.wait_for(upload, 30)
        assert (await artifactstore.object_info(js, names, object_name)).nuid == first
        assert await _has_chunks(js, names, first)
