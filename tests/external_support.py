"""Helpers for the external job tests: starting one and reporting as its worker would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from hypothesis import strategies as st

from tests.tools import http_clients

EXTERNAL_TYPES = str(Path(__file__).parent / "tools" / "external_jobtypes.toml")


class ExternalJob:
    """A started external job, with its callback token."""

    def __init__(self, created: dict[str, Any]) -> None:
        """From ``POST /api/jobs``'s answer, or one of a batch's ``callbacks``."""
        self.id: str = created.get("id") or created["job_id"]
        self.token: str = created["callback_token"]
        self.url: str = created["callback_url"]
        self.path = f"/api/external/jobs/{self.id}"

    async def report(
        self, client: httpx.AsyncClient, token: str | None = None, **body: Any
    ) -> httpx.Response:
        """One report with this job's token (or ``token``), no other credential."""
        return await client.post(
            self.path,
            json=body,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    async def report_when_held(
        self, client: httpx.AsyncClient, timeout: float = 30.0, **body: Any
    ) -> httpx.Response:
        """Report, waiting out ``409 JOB_WAITING`` until a runner holds the job."""
        async with asyncio.timeout(timeout):
            while True:
                response = await self.report(client, **body)
                if response.status_code != 409 or response.json()["error"]["code"] != "JOB_WAITING":
                    return response
                await asyncio.sleep(0.05)


async def start_external(
    client: httpx.AsyncClient, job_type: str = "document", **parameters: Any
) -> ExternalJob:
    response = await client.post("/api/jobs", json={"job_type": job_type, "parameters": parameters})
    assert response.status_code == 201, response.text
    return ExternalJob(response.json())


def worker_client(base_url: str) -> httpx.AsyncClient:
    """A client with no API token or cookie: what an external worker has."""
    return http_clients.client(base_url=base_url, timeout=30)


# What a worker might send: anything JSON, and shapes close to a report with any values in them.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
report_like = st.fixed_dictionaries(
    {},
    optional={
        "report_id": st.text(max_size=10),
        "progress": json_values,
        "phase": json_values,
        "message": json_values,
        "lines": st.lists(
            st.fixed_dictionaries(
                {"text": st.text()}, optional={"level": st.text(), "stream": st.text()}
            ),
            max_size=3,
        )
        | json_values,
        "result": json_values,
        "error": st.fixed_dictionaries({"code": st.text(), "message": json_values}) | json_values,
    },
)
