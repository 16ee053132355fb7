"""Hostile input: parameters never become a command, output is escaped, input is bounded."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import iter_events, read_stream
from tests.system import System
from tests.tools.job_type_files import INJECTION_TYPES

TERMINAL = {"completed", "failed", "cancelled"}
SHELL = (
    "$(touch {canary}); `touch {canary}` | touch {canary} && touch {canary}; "
    "${{HOME}} > * 'q' \"d\""
)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    record_dir = tmp_path / "argv"
    record_dir.mkdir()
    monkeypatch.setenv("ARGV_RECORD_DIR", str(record_dir))
    return msgspec.structs.replace(
        settings, job_types_file=INJECTION_TYPES, auth=True, max_streams_per_token=2
    )


async def run_recorded(system: System, tmp_path: Path, parameters: dict[str, Any]) -> list[str]:
    """Start a ``record`` job, wait for it, return the argv its tool received (after argv[0])."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": "record", "parameters": parameters}
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        async with asyncio.timeout(30):
            while True:
                job = (await client.get(f"/api/jobs/{job_id}")).json()
                if job["status"] in TERMINAL:
                    break
                await asyncio.sleep(0.05)
    assert job["status"] == "completed", job
    (record,) = list((tmp_path / "argv").glob("*.json"))
    return list(json.loads(record.read_text()))


async def rejected(system: System, parameters: dict[str, Any]) -> dict[str, Any]:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "record", "parameters": parameters}
        )
    assert response.status_code == 422, response.text
    return dict(response.json()["error"])


async def test_shell_metacharacters_reach_the_tool_literally(
    system: System, tmp_path: Path
) -> None:
    """Shell syntax in a string parameter is one literal argv element; nothing runs it."""
    canary = tmp_path / "pwned"
    value = SHELL.format(canary=canary)
    argv = await run_recorded(system, tmp_path, {"text": value, "positional": value})
    assert argv == [value, "--text", value]
    assert not canary.exists()


@pytest.mark.parametrize(
    ("parameters", "code"),
    [
        ({"text": "--help"}, "LEADING_DASH"),
        ({"positional": "-rf"}, "LEADING_DASH"),
        ({"text": "a\nb"}, "INVALID_CHARACTER"),
        ({"text": "a\rb"}, "INVALID_CHARACTER"),
        ({"text": "a\x00b"}, "INVALID_CHARACTER"),
        ({"text": "x" * 1_000_000}, "TOO_LONG"),
        ({"choice": "alpha; rm -rf /"}, "INVALID_CHOICE"),
        ({"many": ["x", "--switch"]}, "INVALID_CHOICE"),
        ({"count": "1; id"}, "INVALID_TYPE"),
        ({"count": 10**30}, "OUT_OF_RANGE"),
        ({"switch": "true; id"}, "INVALID_TYPE"),
        ({"extra": "x"}, "UNKNOWN_PARAMETER"),
    ],
)
async def test_dangerous_values_are_rejected_with_422(
    system: System, parameters: dict[str, Any], code: str
) -> None:
    """Values that could become flags or break a line are refused, naming the field."""
    error = await rejected(system, parameters)
    assert error["code"] == "INVALID_PARAMETERS"
    assert [f["code"] for f in error["fields"]] == [code]


async def test_leading_dash_is_a_value_where_the_schema_allows_it(
    system: System, tmp_path: Path
) -> None:
    """With allow_leading_dash the value follows its flag as data, never as a flag of its own."""
    argv = await run_recorded(system, tmp_path, {"dash": "--switch"})
    assert argv == ["first", "--dash", "--switch"]


async def test_every_parameter_kind_builds_separate_argv_elements(
    system: System, tmp_path: Path
) -> None:
    """Enum, multi-enum, integer, bool and unicode strings arrive as exact argv elements."""
    argv = await run_recorded(
        system,
        tmp_path,
        {
            "positional": "Grüße 👋 ' \" ;",
            "text": "a b\tc",
            "choice": "beta",
            "many": ["z", "x"],
            "count": 7,
            "switch": True,
        },
    )
    assert argv == [
        "Grüße 👋 ' \" ;",
        "--text",
        "a b\tc",
        "--choice",
        "beta",
        "--many",
        "z",
        "--many",
        "x",
        "--count",
        "7",
        "--switch",
    ]


MARKUP = "<script>alert(1)</script>&<img src=x onerror=alert(2)>"


async def test_output_with_markup_and_sse_syntax_stays_data_in_the_stream(
    system: System, tmp_path: Path
) -> None:
    """A line that looks like SSE fields or HTML arrives as one JSON data line, unchanged but
    for the C1 control NEL (U+0085), which the runner removes as every C1 control."""
    text = f"x\u2028event: done\u2029data: {MARKUP}\x85id: 999"
    await run_recorded(system, tmp_path, {"text": text})
    async with system.client() as client:
        job_id = (await client.get("/api/jobs")).json()["items"][0]["id"]
        stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
    lines = [e.json["text"] for e in stream.events if e.event == "message"]
    assert f"arg: {text.replace(chr(0x85), '')}" in lines
    assert [e.event for e in stream.events].count("done") == 1


async def test_job_page_escapes_parameters_and_lines(system: System, tmp_path: Path) -> None:
    """The job's page shows markup from parameters and output as text, never as markup."""
    await run_recorded(system, tmp_path, {"text": MARKUP})
    async with system.client() as client:
        job_id = (await client.get("/api/jobs")).json()["items"][0]["id"]
        page = await client.get(f"/jobs/{job_id}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_download_file_name_is_safe(system: System, tmp_path: Path) -> None:
    """The log download names a plain file: no quotes, slashes or control characters."""
    await run_recorded(system, tmp_path, {"text": MARKUP})
    async with system.client() as client:
        job_id = (await client.get("/api/jobs")).json()["items"][0]["id"]
        download = await client.get(f"/api/jobs/{job_id}/logs/download")
    assert download.status_code == 200
    disposition = download.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9_.-]+"', disposition)
    assert MARKUP in download.text
    assert download.headers["content-type"].startswith("text/plain")


async def test_oversized_body_gets_413_with_a_json_error(system: System) -> None:
    """A body over 1 MiB is refused with BODY_TOO_LARGE in the usual error shape: a sentence
    naming the limit, and the limit in bytes (not the framework's "Request Entity Too Large")."""
    body = json.dumps({"job_type": "record", "parameters": {"text": "x" * 2_000_000}})
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "BODY_TOO_LARGE"
    assert error["limit"] == 1024 * 1024
    assert "at most 1048576 bytes" in error["message"]


@pytest.mark.parametrize(
    "path",
    ["/api/jobs?limit=501", "/api/jobs?limit=0", "/api/jobs?limit=-1", "/api/jobs?limit=1e9"],
)
async def test_list_limit_is_bounded(system: System, path: str) -> None:
    """A page size outside 1-500 is refused, not clamped silently."""
    async with system.client() as client:
        response = await client.get(path)
    assert response.status_code in (400, 422), response.text
    assert "error" in response.json()


@pytest.mark.parametrize(
    "path",
    ["/api/jobs?colour=red", "/api/job-types?x=1", "/api/me?debug=1", "/api/tokens?all=1"],
)
async def test_unknown_query_parameter_is_rejected(system: System, path: str) -> None:
    """A query parameter a route does not take answers 400, not silently ignored."""
    async with system.client() as client:
        response = await client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("UNKNOWN_QUERY_PARAMETER", "INVALID_QUERY")


async def test_a_huge_unknown_id_is_not_echoed_whole(system: System) -> None:
    """A 10,000-character job or batch id answers 404 with its start only (it came back whole,
    10 KB of whatever the caller sent, in the sentence)."""
    huge = "a" * 10_000
    async with system.client() as client:
        answers = [
            await client.get(f"/api/jobs/{huge}"),
            await client.get(f"/api/jobs/{huge}/logs"),
            await client.get(f"/api/batches/{huge}"),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        message = answer.json()["error"]["message"]
        assert len(message) < 200, message
        assert message.endswith(f"id {'a' * 64!r}….")


async def test_unknown_body_field_is_rejected(system: System) -> None:
    """A job request with a field it does not know is refused with 422."""
    async with system.client() as client:
        job = await client.post("/api/jobs", json={"job_type": "record", "priority": 1})
        token = await client.post(
            "/api/tokens", json={"name": "n", "role": "viewer", "superuser": True}
        )
    assert job.status_code == 422
    assert token.status_code == 422, token.text
    assert token.json()["error"]["code"] == "INVALID_TOKEN_REQUEST"


async def test_open_streams_per_token_are_capped(system: System) -> None:
    """Past the per-token cap a new event stream answers 429; closing one frees a place."""
    viewer = await system.create_token("watcher", "viewer")
    async with system.client(token=viewer) as client:
        first = client.stream("GET", "/api/jobs/stream")
        second = client.stream("GET", "/api/jobs/stream")
        async with first as one, second as two:
            assert (one.status_code, two.status_code) == (200, 200)
            third = await client.get("/api/jobs/stream")
            assert third.status_code == 429
            assert third.json()["error"]["code"] == "TOO_MANY_STREAMS"
            async with system.client() as admin, admin.stream("GET", "/api/jobs/stream") as other:
                assert other.status_code == 200  # the cap is per token
        async with asyncio.timeout(10):
            while True:
                async with client.stream("GET", "/api/jobs/stream") as again:
                    if again.status_code == 200:
                        break
                await asyncio.sleep(0.05)


async def test_stream_events_are_not_lost_to_the_cap(system: System) -> None:
    """A capped token's open streams keep working (the 429 only refuses new ones)."""
    viewer = await system.create_token("watcher", "viewer")
    async with (
        system.client(token=viewer) as client,
        client.stream("GET", "/api/jobs/stream") as one,
        client.stream("GET", "/api/jobs/stream") as two,
    ):
        assert (await client.get("/api/jobs/stream")).status_code == 429
        async with system.client() as admin:
            created = await admin.post("/api/jobs", json={"job_type": "record"})
        job_id = created.json()["id"]
        async with asyncio.timeout(30):
            async for event in iter_events(one):
                if event.json["jobId"] == job_id:
                    break
        assert two.status_code == 200
