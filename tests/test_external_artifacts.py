"""External jobs attach files: PUT /api/external/jobs/{id}/artifacts/{name} with the callback
token, then listed and served like a tool's artifacts."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import sys

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, ExternalJob, start_external, worker_client
from tests.system import System
from tests.tools.runners import REPO, wait_status

DATA = bytes(range(256)) * 2000  # 512,000 bytes: several chunks


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=EXTERNAL_TYPES, artifact_max_file_bytes=600_000
    )


def _put(job: ExternalJob, name: str, token: str | None = None) -> tuple[str, dict[str, str]]:
    return (
        f"{job.path}/artifacts/{name}",
        {
            "Authorization": f"Bearer {token or job.token}",
            "Content-Type": "application/octet-stream",
        },
    )


async def test_worker_attaches_a_file_that_is_listed_and_served(system: System) -> None:
    """A file PUT by the worker is listed with its checksum and downloads byte for byte."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        url, headers = _put(job, "pages/page-1.bin")
        stored = await worker.put(url, content=DATA, headers=headers)
        again = await worker.put(url, content=DATA, headers=headers)
        await job.report(worker, result={"pages": 1})
        await wait_status(client, job.id, "completed")
        listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
        body = (await client.get(listed["items"][0]["url"])).content
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert again.status_code == 201
    assert [(a["name"], a["size"]) for a in listed["items"]] == [("pages/page-1.bin", len(DATA))]
    assert body == DATA


async def test_upload_needs_this_jobs_callback_token(system: System) -> None:
    """Another job's token, or an API token, opens no upload (401)."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        other = await start_external(client, file="b.pdf")
        await job.report_when_held(worker, progress=10)
        url, headers = _put(job, "x.bin", token=other.token)
        foreign = await worker.put(url, content=b"x", headers=headers)
        url, headers = _put(job, "x.bin", token=system.admin_token)
        api_token = await worker.put(url, content=b"x", headers=headers)
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (
        401,
        "INVALID_CALLBACK_TOKEN",
    )
    assert api_token.status_code == 401


async def test_upload_over_the_file_limit_is_refused(system: System) -> None:
    """A body over artifact_max_file_bytes answers 413 ARTIFACT_TOO_LARGE; nothing is listed."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        url, headers = _put(job, "big.bin")
        refused = await worker.put(url, content=b"x" * 600_001, headers=headers)
        listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
    assert (refused.status_code, refused.json()["error"]["code"]) == (413, "ARTIFACT_TOO_LARGE")
    assert listed["items"] == []


async def test_a_gz_file_is_stored_as_sent_and_a_content_encoding_is_refused(
    system: System,
) -> None:
    """A .gz file sent as application/gzip is stored byte for byte; the same bytes under
    `Content-Encoding: gzip` answer 415 UNSUPPORTED_CONTENT_ENCODING and store nothing."""
    packed = gzip.compress(DATA)
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        url, headers = _put(job, "encoded.bin")
        encoded = await worker.put(
            url, content=packed, headers={**headers, "Content-Encoding": "gzip"}
        )
        url, headers = _put(job, "pages.gz")
        as_file = await worker.put(
            url, content=packed, headers={**headers, "Content-Type": "application/gzip"}
        )
        listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
        body = (await client.get(listed["items"][0]["url"])).content
    assert (encoded.status_code, encoded.json()["error"]["code"]) == (
        415,
        "UNSUPPORTED_CONTENT_ENCODING",
    )
    assert as_file.status_code == 201, as_file.text
    assert [a["name"] for a in listed["items"]] == ["pages.gz"]
    assert body == packed


async def test_unsafe_name_and_ended_job_are_refused(system: System) -> None:
    """A backslash name answers 400, as does one with a bidirectional override (stored before:
    "invoice<U+202E>fdp.exe" was listed as "invoiceexe.pdf"); a file for a job that ended
    answers 409 JOB_FINISHED."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        url, headers = _put(job, "..%5Cx")
        unsafe = await worker.put(url, content=b"x", headers=headers)
        url, headers = _put(job, "invoice%E2%80%AEfdp.exe")
        spoofing = await worker.put(url, content=b"MZ", headers=headers)
        await job.report(worker, result={"pages": 0})
        await wait_status(client, job.id, "completed")
        url, headers = _put(job, "late.bin")
        late = await worker.put(url, content=b"x", headers=headers)
    assert (unsafe.status_code, unsafe.json()["error"]["code"]) == (400, "INVALID_ARTIFACT_NAME")
    assert (spoofing.status_code, spoofing.json()["error"]["code"]) == (
        400,
        "INVALID_ARTIFACT_NAME",
    ), spoofing.text
    assert "bidirectional override" in spoofing.json()["error"]["message"]
    assert (late.status_code, late.json()["error"]["code"]) == (409, "JOB_FINISHED")


async def test_a_name_windows_cannot_store_is_refused_saying_why(system: System) -> None:
    """``q?x.csv``, ``CON.txt`` and ``end.`` answer 400 INVALID_ARTIFACT_NAME, each sentence
    naming the character or the name and Windows (the job's ZIP must unpack anywhere); nothing
    is listed, and an ordinary name still uploads."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        answers = {}
        for name, sent in [("q?x.csv", "q%3Fx.csv"), ("CON.txt", "CON.txt"), ("end.", "end.")]:
            url, headers = _put(job, sent)
            answers[name] = await worker.put(url, content=b"x", headers=headers)
        url, headers = _put(job, "ok.csv")
        fine = await worker.put(url, content=b"x", headers=headers)
        listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
    errors = {name: answer.json()["error"] for name, answer in answers.items()}
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "q?x.csv": 400,
        "CON.txt": 400,
        "end.": 400,
    }
    assert {e["code"] for e in errors.values()} == {"INVALID_ARTIFACT_NAME"}
    assert "holds '?', which Windows cannot store" in errors["q?x.csv"]["message"]
    assert "device name CON" in errors["CON.txt"]["message"]
    assert "ends with a dot, which Windows drops" in errors["end."]["message"]
    assert fine.status_code == 201, fine.text
    assert [a["name"] for a in listed["items"]] == ["ok.csv"]


async def test_a_file_after_a_failed_end_is_told_the_error_code_as_a_report_is(
    system: System,
) -> None:
    """A worker whose job ended failed learns the code from its upload's 409 as from a report's
    (before: the upload's 409 had only the status)."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        await job.report(worker, error={"code": "DOWNLOAD_FAILED", "message": "gone"})
        await wait_status(client, job.id, "failed")
        url, headers = _put(job, "late.bin")
        late = await worker.put(url, content=b"x", headers=headers)
        report = await job.report(worker)
    assert late.status_code == report.status_code == 409
    assert late.json()["error"] == report.json()["error"]
    assert late.json()["error"]["error_code"] == "DOWNLOAD_FAILED"


async def test_example_worker_attaches_its_summary(system: System) -> None:
    """examples/external_worker.py leaves summary.txt as an artifact of its job."""
    async with system.client() as client:
        job = await start_external(client, file="a.pdf")
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "examples" / "external_worker.py"),
            job.url,
            "--steps",
            "2",
            "--pause",
            "0",
            env={**os.environ, "JOBRUNNER_CALLBACK_TOKEN": job.token},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
        await wait_status(client, job.id, "completed")
        listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
        body = (await client.get(listed["items"][0]["url"])).content
    assert worker.returncode == 0, stderr.decode()
    assert [a["name"] for a in listed["items"]] == ["summary.txt"]
    assert body == b"2 steps done\n"
