"""Bad input gets a clear error with a machine-readable code, never a 500."""

from __future__ import annotations

import re

import pytest

from jobrunner.common.settings import load_settings
from jobrunner.services.api.app import create_app
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
    [b"{not json", b"", b"\x00\x01", b'{"job_type": "scraper"'],
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


# POST routes under /api that read no body (whatever is sent is ignored).
TAKES_NO_BODY = {"/api/jobs/{job_id}/cancel"}


def _json_post_routes() -> list[str]:
    """Every POST route of the API that reads a JSON body, its parameters filled with ``x``."""
    app = create_app(load_settings())
    paths = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        posted = "POST" in getattr(route, "methods", ())
        if posted and path.startswith("/api/") and path not in TAKES_NO_BODY:
            paths.append(path)
    return sorted(paths)


@pytest.mark.parametrize(
    "body",
    # A truncated body whose first field no route knows: msgspec reports the field first.
    [b"{not json", b"\x00\x01", b'{"surprise": 1', b"[" * 100_000],
    ids=["garbage", "binary", "truncated", "nested"],
)
async def test_every_json_route_answers_malformed_json_alike(system: System, body: bytes) -> None:
    """Every address that takes a JSON body answers one that is not JSON with 400
    MALFORMED_JSON. Before: POST /api/tokens (read by the framework) answered 400 BAD_REQUEST
    (500 when nested deeply), and a truncated body after an unknown field was a route's 422."""
    paths = _json_post_routes()
    assert "/api/tokens" in paths  # the scan sees the routes
    assert "/api/jobs" in paths
    answers = {}
    async with system.client() as client:
        for path in paths:
            url = re.sub(r"\{\w+\}", "x", path)
            response = await client.post(
                url,
                content=body,
                # The external report's token is checked only after its body is read.
                headers={"content-type": "application/json", "authorization": "Bearer x"}
                if path.startswith("/api/external/")
                else {"content-type": "application/json"},
            )
            answers[path] = (response.status_code, response.json()["error"]["code"])
    wrong = {path: got for path, got in answers.items() if got != (400, "MALFORMED_JSON")}
    assert not wrong, f"routes answering otherwise: {wrong}"


async def test_a_token_request_of_the_wrong_shape_is_refused_with_its_code(
    system: System,
) -> None:
    """JSON that is not a token request answers 422 INVALID_TOKEN_REQUEST, as a bad name does
    (read by the framework it answered 400 INVALID_REQUEST)."""
    async with system.client() as client:
        unknown_role = await client.post("/api/tokens", json={"name": "ci", "role": "root"})
        unknown_field = await client.post(
            "/api/tokens", json={"name": "ci", "role": "viewer", "surprise": 1}
        )
        # Read strictly, as every JSON body is (the framework converted these loosely).
        boolean_as_text = await client.post(
            "/api/tokens", json={"name": "ci", "role": "viewer", "own_jobs_only": "true"}
        )
        unix_time = await client.post(
            "/api/tokens", json={"name": "ci", "role": "viewer", "expires_at": 1893456000}
        )
    for response in (unknown_role, unknown_field, boolean_as_text, unix_time):
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "INVALID_TOKEN_REQUEST"


async def test_a_role_that_does_not_exist_is_refused_naming_the_roles_there_are(
    system: System,
) -> None:
    """`"role": "root"` answers with the roles to choose from, not only msgspec's "Invalid
    enum value 'root'", which left the admin guessing what to send."""
    async with system.client() as client:
        response = await client.post("/api/tokens", json={"name": "ci", "role": "root"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_TOKEN_REQUEST"
    assert "'root'" in error["message"]
    assert error["message"].endswith("; choose one of viewer, operator, admin.")


@pytest.mark.parametrize("path", ["/api/jobs", "/api/batches"])
async def test_a_time_range_that_ends_before_it_begins_is_a_400_naming_both(
    system: System, path: str
) -> None:
    """created_from after created_to answers 400 INVALID_TIME_RANGE quoting both values, not an
    empty list that looks like "no jobs then"."""
    later, earlier = "2026-03-02T00:00:00Z", "2026-03-01T00:00:00Z"
    async with system.client() as client:
        response = await client.get(path, params={"created_from": later, "created_to": earlier})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_TIME_RANGE"
    assert later in error["message"]
    assert earlier in error["message"]


async def test_every_json_route_says_a_latin_1_body_is_not_utf8(system: System) -> None:
    """Every address that takes a JSON body answers JSON written in Latin-1 with 400
    BODY_NOT_UTF8, not MALFORMED_JSON ("not valid JSON", which the sender's JSON is)."""
    body = '{"name": "Müller", "job_type": "scraper"}'.encode("latin-1")
    answers = {}
    async with system.client() as client:
        for path in _json_post_routes():
            response = await client.post(
                re.sub(r"\{\w+\}", "x", path),
                content=body,
                headers={"content-type": "application/json", "authorization": "Bearer x"}
                if path.startswith("/api/external/")
                else {"content-type": "application/json"},
            )
            error = response.json()["error"]
            answers[path] = (response.status_code, error["code"], "UTF-8" in error["message"])
    wrong = {path: got for path, got in answers.items() if got != (400, "BODY_NOT_UTF8", True)}
    assert not wrong, f"routes answering otherwise: {wrong}"
