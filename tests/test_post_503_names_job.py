"""POST /api/jobs of a ``reject``-lock job whose JobRequested is stored but whose ack is held
past the publish timeout and past the reservation release's own timeout after it: the job is
stored, so the 503 names it (``job_id``), though the clean-up failed too; a 503 without
``job_id`` would tell a client that nothing was stored, and its POST sent again without a key
would create a second job."""

from __future__ import annotations

import asyncio

import msgspec

from jobrunner.common import ackinbox
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.ackholding_proxy import AckHoldingProxy
from tests.system import System

PUBLISH_TIMEOUT = ackinbox.ACK_TIMEOUT


async def test_a_stored_jobs_503_names_it_when_the_reservations_release_fails_too(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    async with AckHoldingProxy("127.0.0.1", own_nats.port) as proxy:
        settings = msgspec.structs.replace(settings, nats_url=proxy.url())
        system = System(settings)
        try:
            await system.start_projector()
            await system.start_api()
            async with system.client() as client:
                proxy.arm(f"{settings.prefix}.job.", prefix=True)
                posting = asyncio.create_task(
                    client.post("/api/jobs", json={"job_type": "scraper", "parameters": {}})
                )
                async with asyncio.timeout(30):
                    await proxy.hit.wait()
                assert await proxy.stored(), "the JobRequested was not stored"
                # Past the publish's 5 s and the reservation release's 5 s after it.
                await asyncio.sleep(2 * PUBLISH_TIMEOUT + 1.5)
                proxy.release()
                answer = await asyncio.wait_for(posting, 30)
                assert answer.status_code == 503, answer.text
                async with asyncio.timeout(30):
                    while not (rows := (await client.get("/api/jobs")).json()["items"]):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)  # the projector's read model: poll
            assert len(rows) == 1, rows  # the job is stored: it will run
            error = answer.json()["error"]
            assert error.get("job_id") == rows[0]["id"], f"the 503 does not name the job: {error}"
        finally:
            proxy.release()
            await system.stop()
