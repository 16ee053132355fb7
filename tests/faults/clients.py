"""What a careful HTTP client of the fault tests does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

IDEMPOTENCY_HEADER = "Idempotency-Key"


# The POSTs that create a job or a batch: the same resend hazard (README, "Submitting a batch").
CREATING_PATHS = frozenset({"/api/jobs", "/api/jobs/batch", "/api/batches"})


class UnsafeResend(AssertionError):
    """A POST that creates (a job, a batch) was about to be sent again without an
    Idempotency-Key."""


async def until_answered(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Send again after a 5xx or a connection error, until answered (60 s at most).

    A POST that creates (a job, or a batch: ``CREATING_PATHS``) is sent again only with an
    ``Idempotency-Key``: a job's 503 may name a job that is stored all the same (``job_id``), a
    batch's 503 may leave a batch stored in part, and so may a connection lost before the
    answer; sent again without a key it would create a second one (README, "One job per slot",
    "Submitting a batch")."""
    async with asyncio.timeout(60):
        while True:
            try:
                response = await send()
            except httpx.HTTPError as exc:
                _refuse_unkeyed_create(exc.request, f"its connection failed ({exc!r})")
                await asyncio.sleep(0.2)
                continue
            if response.status_code < 500:
                return response
            _refuse_unkeyed_create(
                response.request, f"answered {response.status_code} {response.text[:300]}"
            )
            await asyncio.sleep(0.2)


def _refuse_unkeyed_create(request: httpx.Request, outcome: str) -> None:
    path = request.url.path.rstrip("/")
    if (
        request.method == "POST"
        and path in CREATING_PATHS
        and IDEMPOTENCY_HEADER not in request.headers
    ):
        raise UnsafeResend(
            f"POST {path} {outcome}: what it creates may be stored; sent again without an "
            f"{IDEMPOTENCY_HEADER} it could be created twice (send one key on every try, as "
            "create_until_answered does)"
        )


async def create_until_answered(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """``POST /api/jobs`` with ``body`` until answered, every send with one Idempotency-Key:
    a job stored by a send whose answer was a 503 (or lost) is answered, never made again."""
    key = f"until-answered-{uuid.uuid4().hex}"
    return await until_answered(
        lambda: client.post("/api/jobs", json=body, headers={IDEMPOTENCY_HEADER: key})
    )
