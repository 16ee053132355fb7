"""External jobs: endings racing each other and a cancel. Whatever wins, the job ends once (one
terminal status on its subject), every answer is a 2xx or a 409 with a code, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.tools.runners import wait_status
from tests.tools.status_history import statuses

TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES, lease_ttl_seconds=15.0)


ORDERS: dict[str, Callable[[list[Any]], list[Any]]] = {
    "as listed": lambda sent: sent,
    "reversed": lambda sent: sent[::-1],
    "cancel first": lambda sent: [sent[-1], *sent[:-1]],
}


@pytest.mark.parametrize("order", ORDERS)
async def test_endings_and_a_cancel_at_once_end_the_job_once(
    system: System, js: JetStreamContext, settings: Settings, order: str
) -> None:
    """Two results, an error, the first result again and a cancel, all sent at once, in three
    orders (gather starts them in the order given)."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, progress=1)
        endings = [
            job.report(worker, report_id="r1", result={"n": 1}),
            job.report(worker, report_id="r2", result={"n": 2}),
            job.report(worker, report_id="e", error={"code": "BROKEN", "message": "it broke"}),
            job.report(worker, report_id="r1", result={"n": 1}),
            client.post(f"/api/jobs/{job.id}/cancel", json={}),
        ]
        answers = await asyncio.gather(*ORDERS[order](endings))
        done = await wait_status(client, job.id, *TERMINAL, timeout=60)
    problems = []
    for answer in answers:
        if answer.status_code >= 300 and (
            answer.status_code != 409 or not answer.json()["error"]["code"]
        ):
            problems.append(f"{answer.request.url.path}: {answer.status_code} {answer.text[:200]}")
    assert not problems, "\n".join(problems)
    ended = [s for s in await statuses(js, Names(settings.prefix), job.id) if s in TERMINAL]
    assert ended == [done["status"]], ended
