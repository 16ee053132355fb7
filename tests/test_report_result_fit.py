"""An external worker's result that makes its ending larger than the NATS server's max_payload.

The event is refused before it is sent (``check_fits``: MaxPayloadError); the worker is told so
with 413 ``REPORT_TOO_LARGE``, not the 503 "send the report again" of a NATS outage, which it
would follow for ever. (A reviewer's test of session 20.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.test_nats_closed_for_good import ServiceProcess, _wait_api_healthy

MAX_PAYLOAD = 48 * 1024


async def test_a_result_over_max_payload_is_refused_for_good_not_retried(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user="u", password="p")
    (nats.store_dir / "auth.conf").write_text(
        f'server_name: "jobrunner"\nmax_payload: {MAX_PAYLOAD}\n'
        'authorization { user: "u"\n password: "p" }\n'
    )
    nats.start()
    settings = msgspec.structs.replace(
        settings, nats_url=nats.url, job_types_file=EXTERNAL_TYPES, max_line_bytes=2048
    )
    system = System(settings)
    api = ServiceProcess("api", settings, tmp_path / "api.log", host="127.0.0.1", port=system.port)
    try:
        await system.start_projector()
        await system.start_runner()
        system.admin_token = await system.create_token("test-admin", "admin")
        api.start()
        await _wait_api_healthy(system, api)
        async with system.client() as client:
            job = await start_external(client)
            async with worker_client(system.base_url) as worker:
                for _ in range(300):
                    first = await job.report(worker, message="started")
                    if first.status_code < 300:
                        break
                    await asyncio.sleep(0.1)
                assert first.status_code < 300, first.text
                result = {"blob": "x" * (60 * 1024)}  # under the 64 KiB result limit
                answers = [(await job.report(worker, result=result)) for _ in range(3)]
                assert [a.status_code for a in answers] == [413] * 3, answers[-1].text
                assert answers[-1].json()["error"]["code"] == "REPORT_TOO_LARGE"
            assert api.proc is not None
            assert api.proc.poll() is None, "the API stays up"
    finally:
        api.stop()
        await system.stop()
        nats.stop()
