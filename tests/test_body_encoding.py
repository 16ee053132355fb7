"""A request body under a Content-Encoding is refused with a reason, not read as if plain."""

from __future__ import annotations

import gzip

import pytest

from tests.system import System
from tests.ui_support import settings  # noqa: F401  (the fixture: the test job types)

JOB = b'{"job_type": "emit", "parameters": {"lines": 1}}'


async def job_count(system: System) -> int:
    async with system.client() as client:
        answer = await client.get("/api/jobs")
    assert answer.status_code == 200, answer.text
    return len(answer.json()["items"])


@pytest.mark.parametrize("body", [JOB, gzip.compress(JOB)], ids=["plain", "gzipped"])
async def test_a_gzip_labelled_body_is_refused_and_starts_no_job(
    system: System, body: bytes
) -> None:
    """`Content-Encoding: gzip` on a job request answers 415 UNSUPPORTED_CONTENT_ENCODING."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with system.client() as client:
        answer = await client.post("/api/jobs", content=body, headers=headers)
    assert answer.status_code == 415, answer.text
    error = answer.json()["error"]
    assert error["code"] == "UNSUPPORTED_CONTENT_ENCODING"
    assert "uncompressed" in error["message"]
    assert "gzip" in error["message"]
    assert await job_count(system) == 0


async def test_an_identity_encoded_body_is_taken(system: System) -> None:
    """`Content-Encoding: identity` means no encoding: the job starts."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    async with system.client() as client:
        answer = await client.post("/api/jobs", content=JOB, headers=headers)
    assert answer.status_code == 201, answer.text


async def test_a_second_content_encoding_line_is_read_too(system: System) -> None:
    """`Content-Encoding: identity` then a second line `gzip` is still refused (415)."""
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "identity"),
        ("Content-Encoding", "gzip"),
    ]
    async with system.client() as client:
        answer = await client.post("/api/jobs", content=JOB, headers=headers)
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"]["code"] == "UNSUPPORTED_CONTENT_ENCODING"
    assert await job_count(system) == 0
