"""Artifacts: storing 1 GiB of a job's files, then serving them as one ZIP and one by one.

``python -m bench.artifacts`` starts ``jobrunner up`` (as the other benchmarks do), runs a job that
leaves ``--files`` files of ``--mib`` MiB in its output directory, and measures

- how long the runner took from the tool's end to the job's end (the upload into NATS);
- GET /api/jobs/{id}/download-archive: MiB/s to a client that reads as fast as it can, and the
  API process's peak resident memory meanwhile (sampled every 50 ms), against its memory before;
- GET /api/jobs/{id}/artifacts/{name} for one file, the same way;
- the same file resumed at 90 % (``Range: bytes=<90 %>-``, 206): the API walks the sizes of the
  chunks before the range (headers only) and reads from the chunk holding its first byte, so the
  time to the first byte shows what finding that place costs.

It prints one JSON object; bench/RESULTS.md quotes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from typing import Any

import httpx

from bench.system import ROOT, MemorySampler, RunningSystem

JOB_TYPE = """
[job_types.bench_artifacts]
title = "Bench: files in the output directory"
argv = ["{{python}}", "-m", "bench.tools.artifact_files"]
cwd = "{root}"
timeout_seconds = 1800

[job_types.bench_artifacts.parameters.files]
type = "integer"
flag = "--files"
default = 4

[job_types.bench_artifacts.parameters.mib]
type = "integer"
flag = "--mib"
default = 256
"""

MIB = 1024 * 1024


async def _download(
    http: httpx.AsyncClient, url: str, sampler_of: Any, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    api = sampler_of()
    before = round(api.processes["api"].memory_info().rss / MIB, 1)
    size = 0
    crc = 0
    first_byte: float | None = None  # seconds from the request to the body's first bytes
    with api:
        started = time.monotonic()
        async with http.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            assert response.status_code == (206 if headers else 200), response.status_code
            async for chunk in response.aiter_raw():
                if first_byte is None:
                    first_byte = time.monotonic() - started
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)  # the client does a little work, as a real one would
        seconds = time.monotonic() - started
    return {
        "bytes": size,
        "seconds": round(seconds, 2),
        "first_byte_seconds": None if first_byte is None else round(first_byte, 2),
        "mib_per_s": round(size / MIB / seconds, 1),
        "api_rss_mib_before": before,
        "api_rss_mib_peak": api.mib("api"),
    }


async def measure(system: RunningSystem, files: int, mib: int) -> dict[str, Any]:
    processes = system.services()

    def sampler() -> MemorySampler:
        return MemorySampler({"api": processes["api"]}, interval=0.05)

    async with httpx.AsyncClient(
        base_url=system.base_url, headers=system.headers, timeout=120
    ) as http:
        created = await http.post(
            "/api/jobs",
            json={"job_type": "bench_artifacts", "parameters": {"files": files, "mib": mib}},
        )
        created.raise_for_status()
        job_id = created.json()["id"]
        runner = MemorySampler({"runner": processes["runner"]}, interval=0.05)
        poll_errors: list[dict[str, Any]] = []
        with runner:
            job = await _ended(http, job_id, poll_errors)
        assert job["status"] == "completed", job
        listed = (await http.get(f"/api/jobs/{job_id}/artifacts")).json()
        archive = await _download(http, listed["archive_url"], sampler)
        first = listed["items"][0]
        single = await _download(http, first["url"], sampler)
        resume_at = first["size"] * 9 // 10
        resumed = await _download(
            http, first["url"], sampler, headers={"Range": f"bytes={resume_at}-"}
        )
    return {
        "artifacts": {"files": files, "mib_each": mib, "total_bytes": listed["total_bytes"]},
        "job_seconds": job["duration_seconds"],
        "runner_rss_mib_peak": runner.mib("runner"),
        "archive_download": archive,
        "single_download": single,
        "resumed_at_90_percent": resumed,
        "poll_errors": poll_errors,
    }


UNAVAILABLE_PATIENCE_SECONDS = 30.0  # 503s in a row while the job is polled before giving up


async def _ended(
    http: httpx.AsyncClient, job_id: str, poll_errors: list[dict[str, Any]]
) -> dict[str, Any]:
    """The job once it has ended, polled every 0.1 s. A 503 (the API's Postgres or NATS busy on
    a loaded machine) is asked again after its Retry-After, as a client would, for
    ``UNAVAILABLE_PATIENCE_SECONDS`` in a row at most; every answer but a 200 is written down
    (``poll_errors``, and stderr), and any other one ends the run."""
    unavailable_since: float | None = None
    while True:
        answer = await http.get(f"/api/jobs/{job_id}")
        if answer.status_code == 200:
            unavailable_since = None
            job: dict[str, Any] = answer.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.1)
            continue
        error = _error_of(answer)
        poll_errors.append(error)
        print(f"bench.artifacts: the job's poll answered {error}", file=sys.stderr)
        if answer.status_code != 503:
            answer.raise_for_status()
            raise RuntimeError(f"the job's poll answered {error}")
        now = time.monotonic()
        if unavailable_since is None:
            unavailable_since = now
        if now - unavailable_since > UNAVAILABLE_PATIENCE_SECONDS:
            raise RuntimeError(f"the job's poll answered 503 for {UNAVAILABLE_PATIENCE_SECONDS} s")
        await asyncio.sleep(_retry_after(answer))


def _error_of(answer: httpx.Response) -> dict[str, Any]:
    """An error answer's status, code and message (the README's error body), as far as it has
    them."""
    try:
        body = answer.json()["error"]
        code, message = body.get("code"), body.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = None, answer.text[:200]
    return {"status": answer.status_code, "code": code, "message": message}


def _retry_after(answer: httpx.Response) -> float:
    """The answer's Retry-After in seconds (0.1 when it has none or it is no number)."""
    try:
        return max(0.1, float(answer.headers.get("retry-after", "")))
    except ValueError:
        return 0.1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.artifacts")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    system = RunningSystem()

    system.job_types.write_text(system.job_types.read_text() + JOB_TYPE.format(root=ROOT))
    system.start()
    try:
        results = asyncio.run(measure(system, args.files, args.mib))
    finally:
        system.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
