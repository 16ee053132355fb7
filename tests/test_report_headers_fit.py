"""An external worker's report that would make an event over the NATS server's max_payload.

Lines whose LineLogged fits max_payload but not with its headers: nats-py counts the payload
alone; the server counts the headers too and answers a message over it with ``-ERR 'Maximum
Payload Violation'``, a close for good: the API (a process here) would exit 75 on one worker's
report. A result that makes the job's ending too large: sending it again can never pass, so not
the 503 of a NATS outage, which the worker would follow for ever. Both are refused, before
anything is sent, with 413 ``REPORT_TOO_LARGE``. (Reviewers' tests of session 20.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.embedded.nats import EmbeddedNats
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.tools.service_processes import ServiceProcess, wait_api_healthy

MAX_PAYLOAD = 200 * 1024
SMALL_MAX_PAYLOAD = 48 * 1024  # under a 60 KiB result, itself under the 64 KiB result limit
LINES = 14


def _line_logged_size(job_id: str, texts: list[str]) -> int:
    lines = [
        events.LogLine(i + 2, "stdout", "INFO", events.utcnow(), text)
        for i, text in enumerate(texts)
    ]
    event = events.LineLogged(
        job_id=job_id, event_id=events.new_event_id(), occurred_at=events.utcnow(), lines=lines
    )
    return len(codec.encode(event))


def _texts_just_under(job_id: str, below: int) -> list[str]:
    """Lines whose LineLogged is about ``below`` bytes under MAX_PAYLOAD (headers are ~90)."""
    need = MAX_PAYLOAD - below - _line_logged_size(job_id, [""] * LINES)
    piece = need // LINES
    texts = ["x" * piece] * (LINES - 1) + ["x" * (need - (LINES - 1) * piece)]
    assert MAX_PAYLOAD - below - 20 < _line_logged_size(job_id, texts) <= MAX_PAYLOAD - below + 20
    return texts


@asynccontextmanager
async def running_external_job(
    settings: Settings, tmp_path: Path, max_payload: int, max_line_bytes: int
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """An API process (exiting 75 on a close for good) on a NATS server with ``max_payload``,
    and an external job its worker has started: (the API's client, the job, the worker)."""
    nats = EmbeddedNats(tmp_path / "nats", user="u", password="p")
    (nats.store_dir / "auth.conf").write_text(
        f'server_name: "jobrunner"\nmax_payload: {max_payload}\n'
        'authorization { user: "u"\n password: "p" }\n'
    )
    nats.start()
    settings = msgspec.structs.replace(
        settings, nats_url=nats.url, job_types_file=EXTERNAL_TYPES, max_line_bytes=max_line_bytes
    )
    system = System(settings)
    api = ServiceProcess("api", settings, tmp_path / "api.log", host="127.0.0.1", port=system.port)
    try:
        await system.start_projector()
        await system.start_runner()
        system.admin_token = await system.create_token("test-admin", "admin")
        api.start()
        await wait_api_healthy(api)
        async with system.client() as client:
            job = await start_external(client)
            async with worker_client(system.base_url) as worker:
                for _ in range(300):  # until the projector has the job
                    first = await job.report(worker, message="started")
                    if first.status_code < 300:
                        break
                    await asyncio.sleep(0.1)
                assert first.status_code < 300, first.text
                yield client, job, worker
            assert api.proc is not None
            assert api.proc.poll() is None, (tmp_path / "api.log").read_text()[-2000:]
            assert (await client.get("/health")).status_code == 200
    finally:
        api.stop()
        await system.stop()
        nats.stop()


async def test_a_report_under_max_payload_only_without_its_headers_is_refused_and_the_api_stays(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_external_job(settings, tmp_path, MAX_PAYLOAD, 8192) as (_, job, worker):
        texts = _texts_just_under(job.id, below=40)
        answer = await job.report(worker, lines=[{"text": t} for t in texts])
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "REPORT_TOO_LARGE"
        # Well under, with its headers too: stored as before.
        texts = _texts_just_under(job.id, below=400)
        answer = await job.report(worker, lines=[{"text": t} for t in texts])
        assert answer.status_code < 300, answer.text


async def test_a_result_over_max_payload_is_refused_for_good_not_retried(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_external_job(settings, tmp_path, SMALL_MAX_PAYLOAD, 2048) as (
        _,
        job,
        worker,
    ):
        result = {"blob": "x" * (60 * 1024)}  # under the 64 KiB result limit
        answers = [(await job.report(worker, result=result)) for _ in range(3)]
        assert [a.status_code for a in answers] == [413] * 3, answers[-1].text
        assert answers[-1].json()["error"]["code"] == "REPORT_TOO_LARGE"
