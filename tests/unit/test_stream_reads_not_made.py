"""What a client is told when a live stream's read of the read models is not made: the sentence
says why. (Before: READ_MODELS_UNAVAILABLE's "cannot be reached just now" also while Postgres
answered and only the read models' version was not known yet.)"""

from __future__ import annotations

import msgspec
import pytest
from litestar import get

from jobrunner.common.readmodelversion import READMODEL_VERSION
from jobrunner.contracts.names import Names
from jobrunner.services.api.readmodelgate import (
    RETRY_AFTER_SECONDS,
    ReadModelGate,
    ReadModelState,
)
from jobrunner.services.api.readpool import ReadModelsNotRead
from jobrunner.services.api.streamlookups import StreamLookups
from tests.tools.one_route_api import answer_to_get


def lookups_before_the_version_is_known() -> StreamLookups:
    """A stream's reads in an API whose gate has not read the version since its start (a gate
    that never looked: no pool, no NATS needed, none used)."""
    gate = ReadModelGate(None, None, Names("t"), 60.0)  # type: ignore[arg-type]
    assert not gate.known
    return StreamLookups(None, gate, 5.0)  # type: ignore[arg-type]


async def test_a_read_before_the_version_is_known_says_so() -> None:
    with pytest.raises(ReadModelsNotRead, match="not yet read the read models' version"):
        await lookups_before_the_version_is_known().fetchval("SELECT 1")


async def test_the_503_carries_the_reason_of_the_read_not_made() -> None:
    lookups = lookups_before_the_version_is_known()

    @get("/read")
    async def read() -> str:
        return str(await lookups.fetchval("SELECT 1"))

    response = await answer_to_get(read)
    assert response.status_code == 503, response.text
    error = msgspec.json.decode(response.content)["error"]
    assert error["code"] == "READ_MODELS_UNAVAILABLE", error
    assert "not yet read the read models' version" in error["message"], error
    assert "cannot be reached" not in error["message"], error


async def test_a_stream_read_of_another_version_is_answered_as_the_gate_answers() -> None:
    """A stream's opening read meeting read models of another version is answered with the
    gate's own 503: its code, sentence, ``Retry-After`` and what the gate tells of the versions
    (before: no ``version``/``expected_version``, and a Retry-After of its own)."""
    gate = ReadModelGate(None, None, Names("t"), 60.0)  # type: ignore[arg-type]
    gate.state = ReadModelState(found=READMODEL_VERSION + 1)
    gate.known = True
    lookups = StreamLookups(None, gate, 5.0)  # type: ignore[arg-type]

    @get("/read")
    async def read() -> str:
        return str(await lookups.fetchval("SELECT 1"))

    response = await answer_to_get(read)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    error = msgspec.json.decode(response.content)["error"]
    assert error["code"] == "READ_MODELS_NEWER", error
    assert error["version"] == READMODEL_VERSION + 1, error
    assert error["expected_version"] == READMODEL_VERSION, error
