"""Bad input gets a clear error with a machine-readable code, never a 500."""

from __future__ import annotations

import pytest

from tests.system import System


async def test_unknown_job_type_is_rejected_with_its_code(system: System) -> None:
    """Starting a job type that does not exist answers 422 UNKNOWN_JOB_TYPE and lists the known."""
    async with system.client() as client:
        response = await client.post("/api/jobs", json={"job_type": "nope", "parameters": {}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "UNKNOWN_JOB_TYPE"
    assert "nope" in error["message"]
    assert "scraper" in error["known"]


async def test_every_bad_parameter_is_named(system: System) -> None:
    """Each invalid parameter is reported by name with its own code, all at once."""
    parameters = {
        "plz_filter": "4x",
        "confidence_filter": ["none", "high"],
        "search_provider": "bing",
        "headless": "yes",
        "surprise": 1,
    }
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "enrich_search", "parameters": parameters}
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_PARAMETERS"
    codes = {f["field"]: f["code"] for f in error["fields"]}
    assert codes == {
        "parameters.plz_filter": "PATTERN_MISMATCH",
        "parameters.confidence_filter": "INVALID_CHOICE",
        "parameters.search_provider": "INVALID_CHOICE",
        "parameters.headless": "INVALID_TYPE",
        "parameters.surprise": "UNKNOWN_PARAMETER",
    }


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe", b'{"job_type": "scraper"'],
    ids=["garbage", "empty", "binary", "truncated"],
)
async def test_malformed_json_is_a_400(system: System, body: bytes) -> None:
    """A body that is not JSON answers 400 MALFORMED_JSON."""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_JSON"


@pytest.mark.parametrize(
    "body",
    [{"parameters": {}}, {"job_type": 7}, {"job_type": "scraper", "extra": 1}, [1, 2]],
    ids=["missing-type", "type-not-string", "unknown-field", "array"],
)
async def test_json_that_is_not_a_job_request_is_a_422(system: System, body: object) -> None:
    """JSON of the wrong shape answers 422 INVALID_REQUEST with a sentence saying why."""
    async with system.client() as client:
        response = await client.post("/api/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/jobs/does-not-exist"),
        ("DELETE", "/api/jobs/does-not-exist"),
        ("POST", "/api/jobs/does-not-exist/cancel"),
        ("GET", "/jobs/stream/does-not-exist"),
        ("GET", "/api/jobs/does-not-exist/stream"),
    ],
)
async def test_unknown_job_id_is_a_404_everywhere(system: System, method: str, path: str) -> None:
    """Any address naming a job that does not exist answers 404 JOB_NOT_FOUND."""
    async with system.client() as client:
        response = await client.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_job_types_are_listed_with_their_parameter_schemas(system: System) -> None:
    """GET /api/job-types shows PRD-005's four types with typed parameters, and no argv."""
    async with system.client() as client:
        types = {t["name"]: t for t in (await client.get("/api/job-types")).json()}
    assert set(types) == {"scraper", "enrich_email", "enrich_search", "blacklist_sync"}
    search = types["enrich_search"]["parameters"]
    assert search["confidence_filter"]["type"] == "multi_enum"
    assert [c["value"] for c in search["search_provider"]["choices"]] == [
        "duckduckgo",
        "serper",
        "serpapi",
    ]
    assert "argv" not in types["scraper"]
