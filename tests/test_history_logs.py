"""Reading any log: JSON pages, the tail, filters, and the whole log as a text download."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.history_support import (
    BASE_TIME,
    job_events,
    logged_job,
    publish,
    reading_system,
    wait_projected,
    without_auth,
)
from tests.system import System
from tests.tools.emit_jobs import finished_job
from tests.tools.job_type_files import TEST_TYPES

LINES = 1200


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return without_auth(msgspec.structs.replace(settings, job_types_file=TEST_TYPES))


@pytest.fixture
async def logs(settings: Settings) -> AsyncIterator[System]:
    """A finished job ``big`` with LINES lines and ``mixed`` with 40 lines, every 10th on stderr."""
    last = await publish(settings, logged_job("big", LINES) + logged_job("mixed", 40, 10))
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


def printed(n: int) -> list[str]:
    return [f"INFO line {i} [{i}/{n}]" for i in range(1, n + 1)]


async def test_log_pages_follow_next_after_to_the_end(logs: System) -> None:
    """Paging with next_after returns every line once, in order."""
    texts: list[str] = []
    params: dict[str, object] = {"limit": 500}
    async with logs.client() as client:
        while True:
            page = (await client.get("/api/jobs/big/logs", params=params)).json()
            texts += [line["text"] for line in page["items"]]
            if page["next_after"] is None:
                break
            params["after"] = page["next_after"]
    assert texts == printed(LINES)


async def test_tail_gives_the_last_lines_oldest_first(logs: System) -> None:
    """?tail=50 shows the last fifty lines, as the side panel needs them."""
    async with logs.client() as client:
        page = (await client.get("/api/jobs/big/logs", params={"tail": 50})).json()
    assert [line["text"] for line in page["items"]] == printed(LINES)[-50:]
    assert [line["seq"] for line in page["items"]] == list(range(LINES - 49, LINES + 1))


async def test_lines_filter_by_stream_level_and_text(logs: System) -> None:
    """stream=stderr, level and search each narrow the lines."""
    url = "/api/jobs/mixed/logs"
    async with logs.client() as client:
        stderr = (await client.get(url, params={"stream": "stderr"})).json()["items"]
        info = (await client.get(url, params={"level": "INFO", "stream": "stdout"})).json()
        found = (await client.get(url, params={"search": "LINE 1"})).json()["items"]
        none = (await client.get(url, params={"level": "ERROR"})).json()["items"]
    assert [line["seq"] for line in stderr] == [10, 20, 30, 40]
    assert len(info["items"]) == 36
    assert {line["seq"] for line in found} == {1, *range(10, 20)}
    assert none == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"level": "LOUD"}, "level"),
        ({"stream": "stdin"}, "stream"),
        ({"tail": "0"}, "tail"),
        ({"after": "-1"}, "after"),
        ({"limit": "5001"}, "limit"),
        ({"tail": "5", "after": "2"}, "tail"),
    ],
)
async def test_bad_log_query_answers_400_naming_the_field(
    logs: System, params: dict[str, object], field: str
) -> None:
    """A bad log filter is a 400 that names the field."""
    async with logs.client() as client:
        response = await client.get("/api/jobs/mixed/logs", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_download_is_the_printed_log_line_by_line(system: System) -> None:
    """A tool's downloaded log has one line per printed line: time and the text printed, which
    starts with its level (the level is not written twice)."""
    job = await finished_job(system, lines=LINES)
    async with (
        system.client() as client,
        client.stream("GET", f"/api/jobs/{job['id']}/logs/download") as response,
    ):
        assert response.status_code == 200
        disposition = response.headers["content-disposition"]
        body = (await response.aread()).decode()
    assert response.headers["content-type"].startswith("text/plain")
    assert disposition == f'attachment; filename="emit-{job["id"]}.log"'
    lines = body.splitlines()
    assert len(lines) == LINES
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (.*)$")
    for got, want in zip(lines, printed(LINES), strict=True):
        match = pattern.match(got)
        assert match, got
        assert match.group(1) == want


# (stored level, text as stored) -> the download's line after its time: the level column only
# where the text does not start with exactly that level, then a space, tab or its end.
LEVEL_SHOWN_ONCE = [
    ("INFO", "INFO    Starte DATEV Scraper...", "INFO    Starte DATEV Scraper..."),
    ("ERROR", "ERROR\tgone", "ERROR\tgone"),
    ("SUCCESS", "SUCCESS", "SUCCESS"),
    ("WARNING", "WARN disk almost full", "WARNING WARN disk almost full"),
    ("ERROR", "error: gone", "ERROR   error: gone"),
    ("SUCCESS", "\x1b[32mSUCCESS\x1b[0m 12 gespeichert", "SUCCESS SUCCESS 12 gespeichert"),
    ("ERROR", "2025-12-27 12:15:00 ERROR gone", "ERROR   2025-12-27 12:15:00 ERROR gone"),
    ("INFO", "plain text", "INFO    plain text"),
    ("INFO", "", "INFO    "),
    ("INFO", "the INFO is not at the start", "INFO    the INFO is not at the start"),
    # A job type's own level_pattern read another level than the text's first word.
    ("ERROR", "INFO request failed: code=E42", "ERROR   INFO request failed: code=E42"),
    ("ERROR", "jobrunner: the tool could not start", "ERROR   jobrunner: the tool could not start"),
]
# Every downloaded line, with or without its level column, parses alike: time, level, text.
DOWNLOAD_LINE = re.compile(r"^(\S+) (\S+)\s+(.*)")


async def test_download_shows_each_lines_level_once(settings: Settings) -> None:
    """A line that starts with its level (``INFO    Starte ...``) is downloaded without a second
    level column; a line without its level, or with another one, keeps the column."""
    job = job_events("levels", "emit", status=JobStatus.RUNNING)
    job.append(
        events.LineLogged(
            job_id="levels",
            lines=[
                events.LogLine(i, "stdout", level, BASE_TIME, text)
                for i, (level, text, _) in enumerate(LEVEL_SHOWN_ONCE, 1)
            ],
        )
    )
    last = await publish(settings, job)
    async with reading_system(settings) as system, system.client() as client:
        await wait_projected(settings, last)
        response = await client.get("/api/jobs/levels/logs/download")
    assert response.status_code == 200, response.text
    shown = [line.split(" ", 1)[1] for line in response.text.splitlines()]
    assert shown == [want for _, _, want in LEVEL_SHOWN_ONCE]
    for line, (level, _, _) in zip(
        response.text.splitlines(keepends=True), LEVEL_SHOWN_ONCE, strict=True
    ):
        match = DOWNLOAD_LINE.match(line)
        assert match, line
        assert match.group(2) == level


async def test_download_of_an_unknown_job_is_404(logs: System) -> None:
    """Downloading a job that does not exist answers 404 JOB_NOT_FOUND."""
    async with logs.client() as client:
        response = await client.get("/api/jobs/nope/logs/download")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_download_filename_is_safe() -> None:
    """A job type or id with odd characters never escapes the quoted file name."""
    from jobrunner.services.api.routes.logs import download_filename

    assert download_filename('a"b/../c', "x\r\ny") == "a_b_.._c-x_y.log"
    assert download_filename("...", "") == "job.log"
