"""POST /api/jobs: reading the request body into a job request."""

from __future__ import annotations

import pytest

from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.routes.jobs import decode_create


def refused(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as exc:
        decode_create(body)
    return exc.value


def test_job_request_is_read() -> None:
    """A body with a job type and parameters is a job request."""
    request = decode_create(b'{"job_type":"scraper","parameters":{"plz_filter":"10"}}')
    assert (request.job_type, request.parameters) == ("scraper", {"plz_filter": "10"})


def test_body_that_is_not_json_is_400_malformed_json() -> None:
    """A body that is not JSON answers 400 MALFORMED_JSON with a sentence."""
    error = refused(b'{"job_type": ')
    assert (error.status, error.code) == (400, "MALFORMED_JSON")


def test_json_that_is_no_job_request_is_422() -> None:
    """JSON of the wrong shape answers 422 INVALID_REQUEST naming what is wrong."""
    error = refused(b'{"job_type": 5}')
    assert (error.status, error.code) == (422, "INVALID_REQUEST")
    assert "job_type" in error.message


def test_deeply_nested_body_is_a_client_error() -> None:
    """Parameters nested thousands of levels deep (a few KB) answer 400, not 500."""
    error = refused(b'{"job_type":"scraper","parameters":{"a":%b%b}}' % (b"[" * 5000, b"]" * 5000))
    assert (error.status, error.code) == (400, "MALFORMED_JSON")
    assert "nested" in error.message
