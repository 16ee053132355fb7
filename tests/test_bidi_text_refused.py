"""Text an operator gives that the web UI shows (a batch's name, an action's reason) with a
bidirectional override or isolate (U+202A-E, U+2066-9): refused by the live API, nothing stored."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.batch_submit_support import batch_body, post_batch, stored_count
from tests.system import System
from tests.tools.runners import RUNNER_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def test_a_batch_named_with_an_override_is_refused_and_nothing_is_stored(
    projector_and_api: System,
) -> None:
    """``b<U+202E>idi`` (listed as "bidi" before) answers 422 INVALID_BATCH, INVALID_CHARACTER at
    batch_name, naming U+202E; the stream holds no event of it."""
    async with projector_and_api.client() as client:
        response = await post_batch(client, batch_body(("emit", {}), name="b\u202eidi\u200b"))
    assert response.status_code == 422, response.text
    [problem] = response.json()["error"]["errors"]
    assert (problem["field"], problem["code"]) == ("batch_name", "INVALID_CHARACTER")
    assert "U+202E" in problem["message"]
    assert await stored_count(projector_and_api.settings) == 0


async def test_a_fail_reason_with_an_isolate_is_refused_and_the_batch_goes_on(
    projector_and_api: System,
) -> None:
    """``stop <U+2067> now`` as a fail's reason answers 422 INVALID_OPTIONS at reason; the batch
    is not failed (no BatchFailed stored), and the same fail with a plain reason is taken."""
    async with projector_and_api.client() as client:
        created = await post_batch(client, batch_body(("queued", {}), name="nightly"))
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        stored = await stored_count(projector_and_api.settings)
        refused = await client.post(
            f"/api/batches/{batch_id}/fail", json={"reason": "stop \u2067 now"}
        )
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("INVALID_OPTIONS", "reason")
        assert "bidirectional overrides" in error["message"]
        assert await stored_count(projector_and_api.settings) == stored
        taken = await client.post(f"/api/batches/{batch_id}/fail", json={"reason": "stop now"})
        assert taken.status_code == 202, taken.text
