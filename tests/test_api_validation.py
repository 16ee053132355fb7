"""Bad input gets a clear error with a machine-readable code, never a 500."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from pathlib import Path

import httpx
import pytest
from hypothesis import strategies as st

from jobrunner.common.settings import load_settings
from jobrunner.services.api.app import create_app
from tests.system import System
from tests.tools.drawn_examples import examples


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


@pytest.mark.parametrize("path", ["/api/jobs", "/api/batches"])
@pytest.mark.parametrize(
    ("field", "raw", "side"),
    [
        ("created_from", "0001-01-01T00:00:00+14:00", "before"),
        ("created_to", "9999-12-31T23:59:59-14:00", "after"),
    ],
)
async def test_a_time_beyond_the_years_1_to_9999_in_utc_is_a_400_naming_it(
    system: System, path: str, field: str, raw: str, side: str
) -> None:
    """A time ISO 8601 allows whose UTC instant lies outside years 1-9999 (year 1 at +14:00)
    answers 400 INVALID_QUERY naming the field and what to send, not a 500."""
    async with system.client() as client:
        response = await client.get(path, params={field: raw})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_QUERY"
    assert error["field"] == field
    assert raw in error["message"]
    assert f"{side} " in error["message"]


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


def _post_json(client: httpx.AsyncClient, path: str, body: bytes) -> Awaitable[httpx.Response]:
    return client.post(
        re.sub(r"\{\w+\}", "x", path),
        content=body,
        # The external report's token is checked only after its body is read.
        headers={"content-type": "application/json", "authorization": "Bearer x"}
        if path.startswith("/api/external/")
        else {"content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("encoding", "mark"),
    [
        ("utf-16-le", b""),
        ("utf-16-be", b""),
        ("utf-32-le", b""),
        ("utf-32-be", b""),
        ("utf-16-le", b"\xff\xfe"),
        ("utf-32-be", b"\x00\x00\xfe\xff"),
    ],
)
async def test_every_json_route_says_a_utf16_or_utf32_body_is_not_utf8(
    system: System, encoding: str, mark: bytes
) -> None:
    """JSON saved as "Unicode" (UTF-16) or UTF-32, with or without its byte order mark, answers
    400 BODY_NOT_UTF8 naming the encoding on every address that takes JSON (before: without the
    mark, 400 MALFORMED_JSON, "not valid JSON", which the sender's JSON is)."""
    body = mark + '{"name": "Mueller", "job_type": "scraper"}'.encode(encoding)
    answers = {}
    async with system.client() as client:
        for path in _json_post_routes():
            error = (await _post_json(client, path, body)).json()["error"]
            answers[path] = (error["code"], error.get("encoding"), "UTF-8" in error["message"])
    named = encoding.upper().replace("-", "").replace("UTF", "UTF-")
    wrong = {path: got for path, got in answers.items() if got != ("BODY_NOT_UTF8", named, True)}
    assert not wrong, f"routes answering otherwise: {wrong}"


async def test_every_json_route_reads_json_after_a_utf8_byte_order_mark(system: System) -> None:
    """JSON saved by Notepad or PowerShell 5 starts with a UTF-8 byte order mark: each address
    answers it as the same JSON without the mark (RFC 8259 §8.1 lets a parser ignore it; before:
    400 MALFORMED_JSON). An unknown job type shows the body was read."""
    body = b'{"job_type": "no_such_type", "parameters": {}}'
    async with system.client() as client:
        for path in _json_post_routes():
            plain = await _post_json(client, path, body)
            marked = await _post_json(client, path, b"\xef\xbb\xbf" + body)
            assert plain.status_code == marked.status_code, (path, marked.text)
            assert plain.json()["error"]["code"] == marked.json()["error"]["code"], path
        created = await client.post(
            "/api/jobs",
            content=b'\xef\xbb\xbf{"job_type": "scraper", "parameters": {}}',
            headers={"content-type": "application/json"},
        )
    assert created.status_code in (201, 202), created.text


def _documented_codes() -> set[str]:
    """Every error code README's tables name (``| 400 | `MALFORMED_JSON` | ...``)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    return set(re.findall(r"^\| \d{3} \| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))


# Any bytes, and bytes that are nearly JSON: in another encoding, after a byte order mark, cut.
ANY_BODY = examples(
    st.one_of(
        st.binary(max_size=48),
        st.tuples(
            st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00"]),
            st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "latin-1"]),
            st.dictionaries(st.sampled_from(["job_type", "name", "x"]), st.text(max_size=6)),
            st.integers(0, 64),
        ).map(
            lambda p: (p[0] + json.dumps(p[2], ensure_ascii=False).encode(p[1], "replace"))[: p[3]]
        ),
    ),
    40,
)


async def test_no_body_makes_any_json_route_answer_500_or_an_undocumented_code(
    system: System,
) -> None:
    """Whatever bytes are posted to an address that takes JSON, the answer is never a 500 and
    its code is one of any of README's error tables (documented anywhere, not necessarily for
    that route); an answer that is no JSON counts as wrong."""
    documented = _documented_codes()
    assert {"MALFORMED_JSON", "BODY_NOT_UTF8"} <= documented  # the scan reads the tables
    wrong = []
    async with system.client() as client:
        for path in _json_post_routes():
            for body in ANY_BODY:
                response = await _post_json(client, path, body)
                try:
                    code = response.json().get("error", {}).get("code")
                except ValueError:  # an answer that is no JSON has no code README names
                    code = None
                if response.status_code >= 500 or (
                    response.status_code >= 400 and code not in documented
                ):
                    wrong.append((path, body, response.status_code, code or response.text))
    assert not wrong, wrong
