"""HEAD on every read route of the app: the GET's status and headers, no body (``curl -I``)."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest
from litestar.routes import HTTPRoute
from nats.js import api

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.app import create_app
from tests.system import System
from tests.tools.job_type_files import ARTIFACT_TYPES
from tests.ui_support import start_job, wait_for_status

# A job type that leaves files: its job has a log, artifacts and an archive to download.


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=ARTIFACT_TYPES)


async def job_with_artifacts(system: System) -> str:
    """A finished job whose files are listed."""
    job_id = await start_job(system, "artifacts", mode="several")
    await wait_for_status(system, job_id, {"completed"})
    async with system.client() as client, asyncio.timeout(30):
        while True:  # the artifacts' rows come a moment after the status
            if (await client.get(f"/api/jobs/{job_id}/artifacts")).json()["items"]:
                return job_id
            await asyncio.sleep(0.1)


def read_routes(settings: Settings) -> dict[str, bool]:
    """Every path template of the app that takes GET, and whether it is an event stream."""
    out: dict[str, bool] = {}
    for route in create_app(settings).routes:
        if isinstance(route, HTTPRoute) and "GET" in route.methods:
            handler = route.route_handler_map["GET"][0]
            out[route.path] = handler.media_type == "text/event-stream"
    return out


def filled(template: str, values: dict[str, str]) -> str:
    """The template with a value for each of its path parameters (one missing fails)."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m[1]], template)


async def raw_head(system: System, path: str) -> tuple[int, dict[str, str], bytes]:
    """HEAD over a plain connection: status, headers, and every byte after the headers until
    the server closes (Connection: close), which must be none."""
    async with system.client() as client:
        authorization = client.headers["authorization"]
    host = urlsplit(system.base_url)
    reader, writer = await asyncio.open_connection(host.hostname, host.port)
    try:
        writer.write(
            f"HEAD {path} HTTP/1.1\r\nHost: {host.netloc}\r\nAccept: */*\r\n"
            f"Authorization: {authorization}\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(30):
            received = await reader.read(-1)  # until the server closes
    finally:
        writer.close()
    head, _, after = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, after


async def test_head_answers_every_read_route_as_get_without_a_body(
    system: System, settings: Settings
) -> None:
    """``curl -I`` on any page, API read, static file or download gets what GET would say
    (status, Content-Type, Content-Length) and no body; an event stream answers 405 at once."""
    job_id = await job_with_artifacts(system)
    values = {
        "job_id": job_id,
        "batch_id": "no-such-batch",
        "job_type": "artifacts",
        "name": "data.bin",
        "file_path": "js/sse.js",
        "path": "no-such-document",
    }
    routes = read_routes(settings)
    statuses: dict[str, int] = {}
    assert "/api/jobs/{job_id:str}/logs/download" in routes  # the route list is the app's
    async with system.client() as client:
        for template, is_stream in routes.items():
            path = filled(template, values)
            status, headers, body = await raw_head(system, path)
            assert body == b"", (path, body[:200])
            if is_stream:
                assert status == 405, path
                assert "GET" in headers["allow"], path
                continue
            got = await client.get(path)
            again = await client.get(path)
            statuses[template] = status
            assert status == got.status_code, (path, status, got.status_code)
            assert headers.get("content-type") == got.headers.get("content-type"), path
            if got.content == again.content and "content-length" in got.headers:
                # A body that is the same on every read: HEAD states its exact length.
                assert headers.get("content-length") == str(len(got.content)), path
            else:  # /metrics, /health: their figures move between reads
                assert ("content-length" in headers) == ("content-length" in got.headers), path
    downloads = [t for t in statuses if "download" in t or t.endswith("{name:path}")]
    assert len(downloads) == 3
    assert all(statuses[t] == 200 for t in downloads), statuses


async def consumers_made_by_head(system: System, path: str) -> list[str]:
    """The consumers made on the artifacts' stream while a HEAD of ``path`` was answered (each
    read of a file and each guard of an archive's members is one)."""
    names = Names(system.settings.prefix)
    stream = artifactstore.stream_name(names)
    nc = await eventstore.connect(system.settings, "tests-head")
    try:
        created = await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{stream}.>")
        await nc.flush()
        status, _, _ = await raw_head(system, path)
        assert status == 200, path
        # A consumer of our own after it: advisories of one server arrive in order, so every
        # one before ours is the HEAD's.
        js = nc.jetstream()
        marker = api.ConsumerConfig(
            name="head-marker", ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0
        )
        await js.add_consumer(stream, marker)
        made: list[str] = []
        while True:
            advisory = msgspec.json.decode((await created.next_msg(timeout=30)).data)
            if advisory["consumer"] == "head-marker":
                break
            made.append(advisory["consumer"])
        await js.delete_consumer(stream, "head-marker")
        return made
    finally:
        await nc.close()


async def test_head_of_the_archive_makes_no_read_guard(system: System) -> None:
    """``curl -I`` on the ZIP archive creates no consumer on the artifacts' stream (a GET
    guards each member it will read with one)."""
    job_id = await job_with_artifacts(system)
    assert await consumers_made_by_head(system, f"/api/jobs/{job_id}/download-archive") == []


async def test_head_of_a_log_download_reads_no_line(system: System, settings: Settings) -> None:
    """``curl -I`` on a log download answers at once while the log's table is locked, where a
    GET waits for the lock to read the lines."""
    job_id = await job_with_artifacts(system)
    locker = await asyncpg.connect(settings.database_url)
    try:
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {READ_SCHEMA}.log_lines IN ACCESS EXCLUSIVE MODE")
            status, headers, body = await raw_head(system, f"/api/jobs/{job_id}/logs/download")
    finally:
        await locker.close()
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "text/plain; charset=utf-8"


async def test_head_of_a_file_reads_no_chunk(system: System) -> None:
    """``curl -I`` on a file answers from its description: no reader of its content is made
    (a HEAD answered through the GET's stream read the whole file for nothing)."""
    job_id = await job_with_artifacts(system)
    path = f"/api/jobs/{job_id}/artifacts/data.bin"
    assert await consumers_made_by_head(system, path) == []
