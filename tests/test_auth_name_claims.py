"""A token name is claimed in the token bucket before its token is made. A claim left without
its token (the API killed between the two writes, NATS paused there) must not block the name for
ever: once older than any create still under way, the next create takes it over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats as nats_client
import pytest
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.security import tokens
from jobrunner.services.api.security.tokens import (
    Role,
    TokenNameTaken,
    TokenRecord,
    TokenStore,
    _key,
    _name_key,
)
from tests.freeze import freeze, thaw, thaw_later
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

STALE = 1.0  # NAME_CLAIM_STALE_SECONDS in these tests (10 s in service)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


@pytest.fixture(autouse=True)
def short_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "NAME_CLAIM_STALE_SECONDS", STALE)


async def named(store: TokenStore, name: str) -> int:
    return sum(r.name == name for r in await store.all())


async def test_a_claim_left_without_its_token_is_taken_over_once_stale(system: System) -> None:
    """What an API killed between the claim and the record leaves: a claim naming a token id
    with no record. While young it may be a create under way (409); once older than the bound
    the name is free again, for one token. (Before: 409 for ever, and no such token listed.)"""
    store = await system.tokens()
    await store.kv.create(_name_key("ghost"), b"0123456789abcdef")
    async with system.client() as client:
        young = await client.post("/api/tokens", json={"name": "ghost", "role": "viewer"})
        assert young.status_code == 409, young.text
        await asyncio.sleep(STALE + 0.2)
        created = await client.post("/api/tokens", json={"name": "ghost", "role": "viewer"})
        assert created.status_code == 201, created.text
        again = await client.post("/api/tokens", json={"name": "ghost", "role": "viewer"})
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "TOKEN_NAME_TAKEN"
    assert await named(store, "ghost") == 1


async def test_a_stale_claim_taken_over_by_several_at_once_makes_one_token(system: System) -> None:
    store = await system.tokens()
    await store.kv.create(_name_key("ghost"), b"not even an id")
    await asyncio.sleep(STALE + 0.2)
    body = {"name": "ghost", "role": "viewer"}
    async with system.client() as client:
        answers = await asyncio.gather(*(client.post("/api/tokens", json=body) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409], [
        a.text for a in answers
    ]
    assert await named(store, "ghost") == 1


@pytest.mark.parametrize("skew", [60.0, -60.0], ids=["host-ahead", "host-behind"])
async def test_a_claims_age_does_not_depend_on_this_hosts_clock(
    settings: Settings, js: JetStreamContext, skew: float
) -> None:
    """This API host's clock a minute ahead of the NATS server's, or a minute behind: a claim
    left without its token still blocks its name while young and frees it once stale. (Its age
    was this host's now minus the server's time of the claim: ahead, a fresh claim looked stale
    and a create under way could lose its name to a second token; behind, a stale claim blocked
    the name for a minute more.)"""
    store = await TokenStore.open(
        js, Names(settings.prefix), clock=lambda: datetime.now(UTC) + timedelta(seconds=skew)
    )
    await store.kv.create(_name_key("ghost"), b"0123456789abcdef")
    with pytest.raises(TokenNameTaken):
        await store.create("ghost", "viewer")
    await asyncio.sleep(STALE + 0.2)
    record, _ = await store.create("ghost", "viewer")
    assert record.name == "ghost"
    assert await named(store, "ghost") == 1


class TestNatsPaused:
    """A real nats-server of the test's own, paused with SIGSTOP around a create."""

    @pytest.fixture
    def settings(self, settings: Settings, own_nats: EmbeddedNats) -> Settings:
        return msgspec.structs.replace(settings, nats_url=own_nats.url)

    # nats-py's JetStream requests time out after 5 s: a pause just shorter, and just longer.
    @pytest.mark.parametrize("pause", [4.0, 6.0])
    async def test_pause_over_the_claim(
        self, system: System, own_nats: EmbeddedNats, pause: float
    ) -> None:
        """Paused as the claim is sent: past the request timeout the create fails, yet the
        server applies the claim once it runs again. The name is then free after the bound.
        (Before: the claim's timeout was raised with no attempt to give it back, so the name
        answered 409 for ever.)"""
        assert own_nats.proc is not None
        store = await system.tokens()
        freeze(own_nats.proc.pid)
        creating = asyncio.create_task(store.create("paused", "viewer"))
        await asyncio.sleep(pause)
        thaw(own_nats.proc.pid)
        outcome = await asyncio.gather(creating, return_exceptions=True)
        await name_is_usable_or_listed(system, store, "paused", made=not _failed(outcome))

    # The record's write and the claim's delete each time out after 5 s.
    @pytest.mark.parametrize("pause", [4.0, 6.0, 11.0])
    async def test_pause_between_the_claim_and_the_record(
        self, system: System, own_nats: EmbeddedNats, pause: float
    ) -> None:
        """Paused right after the claim is saved, as the token's record is sent."""
        assert own_nats.proc is not None
        pid = own_nats.proc.pid
        store = await system.tokens()
        real_kv = store.kv

        class PauseBeforeRecord:
            """The real bucket; NATS is paused just before the token's record is written."""

            def __getattr__(self, attribute: str) -> Any:
                return getattr(real_kv, attribute)

            async def create(self, key: str, value: bytes) -> int:
                if key.startswith("token."):
                    freeze(pid)
                    thaw_later(pause, pid)
                return await real_kv.create(key, value)

        store.kv = PauseBeforeRecord()  # type: ignore[assignment]
        outcome = await asyncio.gather(store.create("paused", "viewer"), return_exceptions=True)
        store.kv = real_kv
        await asyncio.sleep(max(0.0, pause - 5) + 0.5)  # NATS runs again
        await name_is_usable_or_listed(system, store, "paused", made=not _failed(outcome))


def _failed(outcome: Sequence[object]) -> bool:
    return isinstance(outcome[0], BaseException)


async def name_is_usable_or_listed(
    system: System, store: TokenStore, name: str, *, made: bool
) -> None:
    """After a fault, a name is either a listed token's, or free: never taken by no token."""
    await asyncio.sleep(STALE + 0.2)
    async with asyncio.timeout(30):
        while True:  # the API's own connection may still be reconnecting
            async with system.client() as client:
                answer = await client.post("/api/tokens", json={"name": name, "role": "viewer"})
            if answer.status_code in (201, 409):
                break
            await asyncio.sleep(0.5)
    listed = await named(store, name)
    if made:
        assert answer.status_code == 409, answer.text
        assert listed == 1
    else:
        assert (answer.status_code, listed) in ((201, 1), (409, 1)), (answer.text, listed)


class TestNatsPausedAfterTheRecordCheck:
    """NATS paused right after the record check: the claim's age was measured before it."""

    @pytest.fixture
    def settings(self, settings: Settings, own_nats: EmbeddedNats) -> Settings:
        return msgspec.structs.replace(settings, nats_url=own_nats.url)

    async def test_a_record_landing_during_the_pause_keeps_its_name(
        self, system: System, own_nats: EmbeddedNats
    ) -> None:
        """Another API claimed the name and sent its token's record, then died; NATS pauses as
        this create has just found no record. The record lands as NATS runs again: this create
        must answer 409, not make a second token of that name."""
        assert own_nats.proc is not None
        pid = own_nats.proc.pid
        store = await system.tokens()
        held_by = "0123456789abcdef"
        await store.kv.create(_name_key("ghost"), held_by.encode())
        other_api = await nats_client.connect(own_nats.url)
        record = TokenRecord(
            id=held_by,
            name="ghost",
            role=Role.VIEWER,
            hash="0" * 64,
            created_at=datetime.now(UTC),
        )

        class PausedAfterTheCheck(TokenStore):
            async def _exists(self, token_id: str) -> bool:
                found = await super()._exists(token_id)
                freeze(pid)
                # The other API's record write, in flight as it died: no one awaits its reply.
                await other_api.publish(
                    f"{store.kv._pre}{_key(held_by)}",
                    msgspec.json.encode(record),
                    headers={"Nats-Expected-Last-Subject-Sequence": "0"},
                )
                thaw_later(STALE + 0.5, pid)
                return found

        try:
            outcome = await asyncio.gather(
                PausedAfterTheCheck(store.kv).create("ghost", "viewer"), return_exceptions=True
            )
            async with asyncio.timeout(10):
                while await store.get(held_by) is None:  # noqa: ASYNC110 - a poll of the bucket
                    await asyncio.sleep(0.05)
            assert await named(store, "ghost") == 1, outcome
            assert isinstance(outcome[0], TokenNameTaken), outcome
        finally:
            thaw(pid)
            await other_api.close()
