"""What the webhook tests share: settings that reach a local receiver, and waiting on the log."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

SECRET = "installation-secret"


def webhook_settings(settings: Settings) -> Settings:
    """Short retries, and the receiver's loopback address allowed (refused by default)."""
    return msgspec.structs.replace(
        settings,
        job_types_file=TEST_TYPES,
        webhook_secret=SECRET,
        webhook_allow_hosts="127.0.0.1",
        webhook_retry_seconds=30.0,
        webhook_first_retry_seconds=0.05,
        webhook_longest_retry_seconds=0.2,
        webhook_connect_timeout_seconds=2.0,
        webhook_timeout_seconds=2.0,
        notifier_ack_wait_seconds=3.0,
    )


async def start_job(system: System, webhook: dict[str, Any] | None, **parameters: Any) -> str:
    body: dict[str, Any] = {"job_type": "emit", "parameters": {"lines": 3, **parameters}}
    if webhook is not None:
        body["webhook"] = webhook
    async with system.client() as client:
        created = await client.post("/api/jobs", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def webhook_log(
    system: System, job_id: str, until: Any, timeout: float = 30.0
) -> dict[str, Any]:
    """GET /api/jobs/{id}/webhooks until ``until(log)`` holds."""
    async with system.client() as client, asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/api/jobs/{job_id}/webhooks")
            assert response.status_code == 200, response.text
            log: dict[str, Any] = response.json()
            if until(log):
                return log
            await asyncio.sleep(0.05)


def settled(log: dict[str, Any], count: int = 1) -> bool:
    states = [d["state"] for d in log["deliveries"]]
    return len(states) == count and all(s != "retrying" for s in states)
