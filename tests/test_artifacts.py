"""Artifacts: what a job leaves in JOBRUNNER_OUTPUT_DIR is stored, listed, served and zipped."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.js.api import ObjectStoreConfig

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.projector.replay import replay
from tests.system import System
from tests.tools.artifact_listing import artifacts_of, finished_artifact_job
from tests.tools.artifacts import pattern
from tests.tools.job_type_files import ARTIFACT_TYPES
from tests.tools.runners import lines_of

MIB = 1024 * 1024

SEVERAL = {
    "summary.txt": b"3 pages read\n",
    "data.bin": pattern(300_000, 1),
    "sub/deeper/report.json": b'{"ok": true}',
    "Übersicht 1.csv": b"a;b\n1;2\n",
    "empty.txt": b"",
}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return msgspec.structs.replace(
        settings,
        job_types_file=ARTIFACT_TYPES,
        lease_ttl_seconds=6.0,
        artifact_work_dir=str(tmp_path / "outputs"),
    )


async def test_tool_files_are_listed_with_size_type_and_checksum(system: System) -> None:
    """Every file the tool wrote, subfolders too, is listed by name with size, type and SHA-256."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several")
        assert job["status"] == "completed"
        listed = await artifacts_of(client, job["id"])
    by_name = {a["name"]: a for a in listed["items"]}
    assert list(by_name) == sorted(SEVERAL)
    for name, data in SEVERAL.items():
        assert by_name[name]["size"] == len(data)
        assert by_name[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert by_name["summary.txt"]["content_type"] == "text/plain"
    assert by_name["sub/deeper/report.json"]["content_type"] == "application/json"
    assert by_name["data.bin"]["content_type"] == "application/octet-stream"
    assert listed["total_bytes"] == sum(len(d) for d in SEVERAL.values())
    assert listed["archive_url"] == f"/api/jobs/{job['id']}/download-archive"


async def test_each_artifact_downloads_byte_identical(system: System) -> None:
    """Each file downloads with its exact bytes, length, ETag and an attachment filename."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several")
        for item in (await artifacts_of(client, job["id"]))["items"]:
            response = await client.get(item["url"])
            assert response.status_code == 200, response.text
            assert response.content == SEVERAL[item["name"]]
            assert response.headers["content-length"] == str(item["size"])
            assert response.headers["etag"] == f'"{item["sha256"]}"'
            assert response.headers["content-disposition"].startswith("attachment; filename=")
        unchanged = await client.get(
            f"/api/jobs/{job['id']}/artifacts/summary.txt",
            headers={"If-None-Match": f'"{hashlib.sha256(SEVERAL["summary.txt"]).hexdigest()}"'},
        )
    assert unchanged.status_code == 304


async def test_archive_unzips_to_the_same_files(system: System) -> None:
    """The download-archive ZIP holds every artifact under its name, byte for byte."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several")
        response = await client.get(f"/api/jobs/{job['id']}/download-archive")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == SEVERAL


async def test_a_failed_job_keeps_its_artifacts(system: System) -> None:
    """A tool that exits non-zero still has what it wrote stored (for the post-mortem)."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several", exit_code=3)
        listed = await artifacts_of(client, job["id"])
    assert job["error"]["code"] == "EXIT_NONZERO"
    assert len(listed["items"]) == len(SEVERAL)


async def test_internal_job_files_become_artifacts(system: System) -> None:
    """A callable's files in ctx.output_dir are listed and served like a tool's."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "internal_artifacts")
        listed = await artifacts_of(client, job["id"])
        body = (await client.get(listed["items"][0]["url"])).content
    assert job["status"] == "completed"
    assert [a["name"] for a in listed["items"]] == ["nested/result.txt"]
    assert body == b"from the callable"


async def test_links_escapes_and_unsafe_names_are_not_stored_but_logged(system: System) -> None:
    """A symlink to /etc/passwd, a file written to ../x, a FIFO and unsafe names (a bidirectional
    override too: stored before, it was listed as "invoiceexe.pdf") are refused, each named in
    the log; the good file is stored and the job completes."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="hostile")
        listed = await artifacts_of(client, job["id"])
        errors = [ln["text"] for ln in await lines_of(client, job["id"]) if ln["level"] == "ERROR"]
    assert job["status"] == "completed"
    assert [a["name"] for a in listed["items"]] == ["kept.txt"]
    log = "\n".join(errors)
    assert "'passwd' is a symbolic link" in log
    assert "'etc_dir' is a symbolic link" in log
    assert "'x' was written outside JOBRUNNER_OUTPUT_DIR" in log
    assert "'pipe' is not a regular file" in log
    assert "'line\\nbreak.txt' is no safe artifact name" in log
    assert "'..\\\\x' is no safe artifact name" in log
    assert "'invoice\\u202efdp.exe' is no safe artifact name" in log
    assert "'q?x#y.csv' is no safe artifact name (the name 'q?x#y.csv' holds '?'" in log
    assert "'CON.txt' is no safe artifact name (the name 'CON.txt' is Windows' device" in log
    assert "'trailing.' is no safe artifact name (the name 'trailing.' ends with a dot" in log


async def wait_listed(client: httpx.AsyncClient, job_id: str, count: int) -> dict[str, Any]:
    """The job's listing once it holds ``count`` artifacts (the projector applied them)."""
    async with asyncio.timeout(30):
        while len((listed := await artifacts_of(client, job_id))["items"]) < count:  # noqa: ASYNC110 - nothing signals a projection
            await asyncio.sleep(0.05)
    return listed


async def test_names_windows_cannot_store_stored_before_still_download(
    system: System, settings: Settings
) -> None:
    """Files stored by an earlier version under names Windows cannot hold (``q?x.csv``,
    ``CON.txt``: no longer stored since session 40) stay listed, downloadable and zipped."""
    old_names = {"q?x.csv": b"question", "sub/CON.txt": b"device", "end.": b"dot"}
    names = Names(settings.prefix)
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several")
        nc = await eventstore.connect(settings, "test-old-artifacts")
        try:
            js = nc.jetstream()
            for name, data in old_names.items():
                object_name = names.artifact_object(job["id"], name)
                stored = await artifactstore.put_file(
                    js, names, object_name, io.BytesIO(data), len(data), lambda: False
                )
                # What a runner of an earlier version published for such a file.
                await eventstore.publish(
                    js,
                    names,
                    events.ArtifactStored(
                        job_id=job["id"],
                        name=name,
                        size=stored.size,
                        sha256=stored.sha256,
                        object_name=object_name,
                    ),
                )
        finally:
            await eventstore.close(nc)
        listed = await wait_listed(client, job["id"], len(SEVERAL) + len(old_names))
        by_name = {item["name"]: item for item in listed["items"]}
        downloads = {name: await client.get(by_name[name]["url"]) for name in old_names}
        archive = await client.get(f"/api/jobs/{job['id']}/download-archive")
    assert {name: r.status_code for name, r in downloads.items()} == dict.fromkeys(old_names, 200)
    assert {name: r.content for name, r in downloads.items()} == old_names
    assert archive.status_code == 200, archive.text
    members = zipfile.ZipFile(io.BytesIO(archive.content))
    assert {name: members.read(name) for name in old_names} == old_names


async def test_output_directory_swapped_for_a_link_is_not_followed(
    system: System, settings: Settings
) -> None:
    """A tool that replaces JOBRUNNER_OUTPUT_DIR itself by a link to a folder outside the work dir:
    nothing in that folder is read or stored, the log says why, the job still completes. On main
    the runner listed the folder through the link and stored ``secret.txt``."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="output_dir_link")
        listed = await artifacts_of(client, job["id"])
        errors = [ln["text"] for ln in await lines_of(client, job["id"]) if ln["level"] == "ERROR"]
    assert (Path(settings.artifact_work_dir).parent / "outside" / "secret.txt").exists()
    assert job["status"] == "completed", job
    assert listed["items"] == []
    assert any("is a symbolic link; not followed" in text for text in errors), errors


async def test_file_over_the_per_file_limit_fails_the_job(
    settings: Settings, system: System
) -> None:
    """A file over artifact_max_file_bytes is not stored; the job fails ARTIFACT_TOO_LARGE."""
    await system.stop_service("runner")
    await system.start_runner("limited", artifact_max_file_bytes=1000)
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="sized", sizes="1000,1001")
        listed = await artifacts_of(client, job["id"])
        errors = [ln["text"] for ln in await lines_of(client, job["id"]) if ln["level"] == "ERROR"]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "ARTIFACT_TOO_LARGE"
    assert "file1.bin" in job["error"]["message"]
    assert [a["name"] for a in listed["items"]] == ["file0.bin"]
    assert any("'file1.bin' not stored" in e and "per file" in e for e in errors)


async def test_files_over_the_per_job_limit_fail_the_job(
    settings: Settings, system: System
) -> None:
    """Files that would take the job over artifact_max_job_bytes are not stored."""
    await system.stop_service("runner")
    await system.start_runner("limited", artifact_max_job_bytes=2500)
    async with system.client() as client:
        job = await finished_artifact_job(
            client, "artifacts", mode="sized", sizes="1000,1000,1000,100"
        )
        listed = await artifacts_of(client, job["id"])
    assert job["error"]["code"] == "ARTIFACT_TOO_LARGE"
    assert [a["name"] for a in listed["items"]] == ["file0.bin", "file1.bin", "file3.bin"]


async def test_output_directory_is_removed_after_the_job(
    settings: Settings, system: System
) -> None:
    """Nothing of a job's output directory stays on the runner's disk, whether the job left
    files in it or nothing."""
    async with system.client() as client:
        await finished_artifact_job(client, "artifacts", mode="several")
        await finished_artifact_job(client, "artifacts", mode="sized", sizes="")
    assert list(Path(settings.artifact_work_dir).iterdir()) == []


async def test_unknown_artifact_and_unsafe_name_answer_clear_errors(system: System) -> None:
    """A name the job does not have is 404 ARTIFACT_NOT_FOUND; a '..' name 400; no artifacts
    means no archive (404 NO_ARTIFACTS)."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="several")
        missing = await client.get(f"/api/jobs/{job['id']}/artifacts/nope.txt")
        unsafe = await client.get(f"/api/jobs/{job['id']}/artifacts/sub/%2E%2E/x")
        empty = await finished_artifact_job(client, "artifacts", mode="sized", sizes="")
        no_archive = await client.get(f"/api/jobs/{empty['id']}/download-archive")
        no_job = await client.get("/api/jobs/nojob/artifacts")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "ARTIFACT_NOT_FOUND")
    assert unsafe.status_code in (400, 404)
    assert (no_archive.status_code, no_archive.json()["error"]["code"]) == (404, "NO_ARTIFACTS")
    assert (no_job.status_code, no_job.json()["error"]["code"]) == (404, "JOB_NOT_FOUND")


async def test_artifacts_are_scoped_like_their_job(system: System) -> None:
    """A token limited to its own jobs cannot list or download another's artifacts."""
    own = await system.create_token("own", "operator", own_jobs_only=True)
    async with system.client() as admin:
        job = await finished_artifact_job(admin, "artifacts", mode="several")
    async with system.client(token=own) as client:
        paths = [
            f"/api/jobs/{job['id']}/artifacts",
            f"/api/jobs/{job['id']}/artifacts/summary.txt",
            f"/api/jobs/{job['id']}/download-archive",
        ]
        answers = [await client.get(p) for p in paths]
    assert [a.status_code for a in answers] == [404, 404, 404]


async def test_two_hundred_megabyte_artifact_round_trips(system: System) -> None:
    """A 200 MB file is stored and downloads with the same SHA-256, streamed both ways."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="big", mib=200)
        assert job["status"] == "completed", job
        (item,) = (await artifacts_of(client, job["id"]))["items"]
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", item["url"]) as response:
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
    assert size == item["size"] == 200 * MIB
    assert digest.hexdigest() == item["sha256"]


async def test_replay_rebuilds_the_same_artifact_rows(settings: Settings, system: System) -> None:
    """A replay from the stream rebuilds the artifacts table row for row."""
    async with system.client() as client:
        await finished_artifact_job(client, "artifacts", mode="several")
        await finished_artifact_job(client, "artifacts", mode="hostile")
    report = await replay(settings)
    assert report.differences == {}
    assert report.tables["artifacts"] == len(SEVERAL) + 1


async def test_runner_start_removes_output_directories_a_killed_runner_left(
    settings: Settings, system: System
) -> None:
    """Files of a job whose runner died mid-job do not stay on disk once a runner starts again."""
    await system.stop_service("runner")
    work = Path(settings.artifact_work_dir)
    leftover = work / "jobrunner-0123456789abcdef-x1y2" / "out"
    leftover.mkdir(parents=True)
    (leftover / "half.bin").write_bytes(b"x" * 1000)
    unrelated = work / "not-ours.txt"
    unrelated.write_text("kept")
    await system.start_runner()
    async with system.client() as client:
        # A job through the new runner: by its end the runner has long finished starting.
        await finished_artifact_job(client, "artifacts", mode="sized", sizes="1")
    assert not leftover.parent.exists()
    assert unrelated.read_text() == "kept"


async def test_runner_starts_on_a_work_dir_under_a_file_and_its_jobs_say_why_they_fail(
    settings: Settings, system: System
) -> None:
    """A work dir that cannot exist (a file where its parent should be) does not keep the
    runner from starting: each job fails SPAWN_FAILED with a sentence naming the setting."""
    await system.stop_service("runner")
    blocker = Path(settings.artifact_work_dir)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file, not a directory")
    await system.start_runner(artifact_work_dir=str(blocker / "outputs"))
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="sized", sizes="1")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "SPAWN_FAILED"
    assert "artifact_work_dir" in job["error"]["message"]


async def test_bucket_refusing_a_file_fails_the_job_instead_of_retrying_forever(
    settings: Settings, system: System
) -> None:
    """A full artifacts bucket: the file is named in the log, the job ends ARTIFACT_NOT_STORED."""
    names = Names(settings.prefix)
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await js.delete_stream(artifactstore.stream_name(names))
        await js.create_object_store(
            names.artifacts_bucket, config=ObjectStoreConfig(max_bytes=300_000)
        )
    finally:
        await nc.close()
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="sized", sizes="1000,400000")
        listed = await artifacts_of(client, job["id"])
        errors = [ln["text"] for ln in await lines_of(client, job["id"]) if ln["level"] == "ERROR"]
    assert job["error"]["code"] == "ARTIFACT_NOT_STORED", job
    assert [a["name"] for a in listed["items"]] == ["file0.bin"]
    assert any("'file1.bin' could not be stored" in e for e in errors)


async def test_a_name_too_long_for_a_nats_subject_is_refused_not_hung(system: System) -> None:
    """A name of 768 characters whose UTF-8 (3,289 bytes) would make its object's subject longer
    than NATS takes: not stored, the log says why, the job completes with its other file. Before
    the fix nats-server closed the runner's connection on the upload; the runner stayed cut off
    and the job never ended. A download of the name is not refused as a bad name (names of up to
    ~2,900 bytes were stored before the limit and still download): it is just not there."""
    long_name = "/".join(["\U0001d538" * 63] * 13 + ["f.txt"])
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="long_name")
        listed = await artifacts_of(client, job["id"])
        errors = [ln["text"] for ln in await lines_of(client, job["id"]) if ln["level"] == "ERROR"]
        missing = await client.get(f"/api/jobs/{job['id']}/artifacts/{long_name}")
        kept = await client.get(listed["items"][0]["url"])
    assert job["status"] == "completed", job
    assert [a["name"] for a in listed["items"]] == ["kept.txt"]
    assert any("longer than 2048 bytes" in text for text in errors), errors
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "ARTIFACT_NOT_FOUND"
    assert kept.content == b"the one good file"
