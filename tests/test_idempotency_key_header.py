"""An ``Idempotency-Key`` header that could stand for no request (empty, only whitespace, too
long, not printable ASCII) is refused with 400 INVALID_IDEMPOTENCY_KEY on every route that
takes one, and nothing is created: a client that meant to send a key learns it sent none."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest
from hypothesis import strategies as st

from jobrunner.common.settings import Settings
from jobrunner.services.api.idempotency import MAX_KEY_CHARS
from tests.batch_submit_support import batch_body, stored_count
from tests.system import System
from tests.tools.drawn_examples import examples
from tests.tools.raw_http import raw_request
from tests.tools.runners import RUNNER_TYPES

BLANK = examples(st.text(alphabet=" \t", min_size=0, max_size=20), 8)
TOO_LONG = examples(st.text(alphabet="abcXYZ-_:09", min_size=MAX_KEY_CHARS + 1, max_size=5000), 3)
ROUTES = {
    "/api/jobs": {"job_type": "emit", "parameters": {"lines": 1}},
    "/api/jobs/batch": batch_body(("emit", {"lines": 1})),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


def refused(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_IDEMPOTENCY_KEY"
    return str(error["message"])


@pytest.mark.parametrize("path", sorted(ROUTES))
async def test_an_empty_or_blank_idempotency_key_is_refused(
    projector_and_api: System, path: str
) -> None:
    """``Idempotency-Key:`` with nothing (or only spaces and tabs) is a 400, not a request
    without a key that a retry would send twice."""
    async with projector_and_api.client() as client:
        authorization = client.headers["authorization"]
    before = await stored_count(projector_and_api.settings)
    body = json.dumps(ROUTES[path]).encode()
    for key in BLANK:
        headers = [
            ("Authorization", f" {authorization}"),
            ("Content-Type", " application/json"),
            ("Idempotency-Key", key),
        ]
        status, answer = await raw_request(projector_and_api.base_url, "POST", path, headers, body)
        assert status == 400, (key, answer)
        assert answer["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
        assert "empty" in answer["error"]["message"], key
    assert await stored_count(projector_and_api.settings) == before


@pytest.mark.parametrize("path", sorted(ROUTES))
async def test_an_idempotency_key_too_long_is_refused_naming_the_limit(
    projector_and_api: System, path: str
) -> None:
    """A key over 200 characters is a 400 whose sentence says the limit and the length sent."""
    async with projector_and_api.client() as client:
        for key in TOO_LONG:
            response = await client.post(path, json=ROUTES[path], headers={"Idempotency-Key": key})
            message = refused(response)
            assert str(MAX_KEY_CHARS) in message
            assert str(len(key)) in message


# Keys with a character outside printable ASCII somewhere, at most 200 characters and not blank,
# as the header's bytes arrive (UTF-8 read byte for byte as Latin-1 by the HTTP server). The HTTP
# server itself refuses a header with a control character other than tab (DEL, \x01) before any
# route, with 400 MALFORMED_REQUEST (test_malformed_requests.py): the route sees tabs and bytes
# 0x80 to 0xff.
NOT_PRINTABLE = [
    "clé-1".encode().decode("latin-1"),  # a key typed with an accent, sent as UTF-8
    "caf\xe9",  # the same in Latin-1
    "order\t42",  # a tab inside (one around the value is stripped)
    "x" * (MAX_KEY_CHARS - 1) + "\xe9",  # at the limit: the character is what is wrong
    *examples(
        st.tuples(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
            st.characters(min_codepoint=0x80, max_codepoint=0xFF),
            st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
                max_size=20,
            ),
        ).map("".join),
        8,
    ),
]


@pytest.mark.parametrize("path", sorted(ROUTES))
async def test_an_idempotency_key_not_printable_ascii_is_refused_saying_so(
    projector_and_api: System, path: str
) -> None:
    """A key with an accent or a tab inside is a 400 whose sentence says a
    key is printable ASCII (not that it is empty or too long), and nothing is stored."""
    async with projector_and_api.client() as client:
        authorization = client.headers["authorization"]
    before = await stored_count(projector_and_api.settings)
    body = json.dumps(ROUTES[path]).encode()
    for key in NOT_PRINTABLE:
        headers = [
            ("Authorization", f" {authorization}"),
            ("Content-Type", " application/json"),
            ("Idempotency-Key", key),
        ]
        status, answer = await raw_request(projector_and_api.base_url, "POST", path, headers, body)
        assert status == 400, (key, answer)
        assert answer is not None, f"the HTTP server refused {key!r} itself"
        assert answer["error"]["code"] == "INVALID_IDEMPOTENCY_KEY", key
        assert answer["error"]["header"] == "Idempotency-Key"
        message = answer["error"]["message"]
        assert "printable ASCII characters only" in message, (key, message)
        assert "empty" not in message
    assert await stored_count(projector_and_api.settings) == before


@pytest.mark.parametrize("path", sorted(ROUTES))
async def test_a_key_too_long_and_not_ascii_is_said_to_be_too_long(
    projector_and_api: System, path: str
) -> None:
    """Over the limit and not ASCII: the length is what the sentence names (fix it first)."""
    key = "é" * (MAX_KEY_CHARS + 1)
    async with projector_and_api.client() as client:
        authorization = client.headers["authorization"]
    headers = [
        ("Authorization", f" {authorization}"),
        ("Content-Type", " application/json"),
        ("Idempotency-Key", key),
    ]
    body = json.dumps(ROUTES[path]).encode()
    status, answer = await raw_request(projector_and_api.base_url, "POST", path, headers, body)
    assert status == 400, answer
    assert answer["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert f"is {MAX_KEY_CHARS + 1} characters long" in answer["error"]["message"]
