"""Hostile and large batch requests against a live API: never a 5xx, never a hang; a batch of
10,000 jobs is accepted and every job of it is in the read model."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import strategies as st

from jobrunner.common.settings import Settings
from tests.batch_submit_support import batch_body, post_batch, stored_count, wait_rows
from tests.system import System
from tests.tools.drawn_examples import examples
from tests.tools.runners import RUNNER_TYPES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
jobs = st.lists(
    st.fixed_dictionaries(
        {"job_type": st.sampled_from(["emit", "rejecting", "queued", "nope"]) | st.text()},
        optional={
            "parameters": st.dictionaries(
                st.sampled_from(["lines", "interval", "label", "x"]), json_values, max_size=3
            )
            | json_values
        },
    )
    | json_values,
    max_size=5,
)
bodies = st.one_of(
    st.fixed_dictionaries({"batch_name": st.text(max_size=220) | json_values, "jobs": jobs}),
    st.fixed_dictionaries(
        {"batch": st.fixed_dictionaries({"batch_name": st.text(), "jobs": jobs})}
    ),
    json_values,
).map(lambda body: json.dumps(body).encode())
raw_bytes = st.binary(max_size=300) | st.just(b"[" * 50_000) | st.just(b'{"jobs": "\\ud800"}')


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def test_generated_batch_bodies_never_answer_a_server_error(
    projector_and_api: System,
) -> None:
    """Hundreds of generated bodies (JSON of every shape, bytes, deep nesting) each get 201,
    400, 413 or 422 with a code and a sentence."""
    async with projector_and_api.client() as client:
        for body in examples(bodies, 250) + examples(raw_bytes, 80):
            response = await client.post(
                "/api/jobs/batch",
                content=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": "fuzz"},
            )
            assert response.status_code in (201, 400, 413, 422), (body[:200], response.text)
            if response.status_code != 201:
                error = response.json()["error"]
                assert error["code"]
                assert error["message"]


async def test_a_batch_of_ten_thousand_jobs_is_accepted_and_every_job_is_pending(
    projector_and_api: System,
) -> None:
    """A 10,000-job batch answers 201 with 10,000 ids, and the read model shows them pending."""
    body = batch_body(*[("emit", {"lines": i % 7}) for i in range(10_000)])
    async with projector_and_api.client() as client:
        response = await post_batch(client, body)
    assert response.status_code == 201, response.text[:300]
    created = response.json()
    assert len(set(created["job_ids"])) == 10_000
    await wait_rows(projector_and_api.settings, created["batch_id"], 10_000, "pending", timeout=120)
    assert await stored_count(projector_and_api.settings) == 10_000 + 2
