"""Where a test's own API listens and the name it answers ``/health`` with (setting
``api_instance_id``): a port the API left, when it crashed or was killed, may be taken by another
program before it starts again (CI's workers start servers on free ports all the time), and only
the name tells our API's answer from a stranger's."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import httpx

from tests.tools import http_clients


class NotOurApi(AssertionError):
    """Something other than our API answered /health on its port."""


def new_instance_name(label: str) -> str:
    """A name no other API of any test answers with."""
    return f"{label}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ApiAddress:
    """Where one API of a test listens, and the name it answers /health with."""

    port: int
    instance: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def answers(self) -> bool:
        """Whether our API answers /health, in any status (it may rightly say 503 while a
        server is away); False while nothing answers (in 2 s). Any other answer on the port
        raises NotOurApi saying what answered: every later request would go to that stranger."""
        return await self.health_status() is not None

    async def health_status(self) -> int | None:
        """The status of our API's /health answer; None while nothing answers (in 2 s);
        NotOurApi when something else answers."""
        try:
            async with http_clients.client(timeout=2) as client:
                response = await client.get(f"{self.url}/health")
        except httpx.HTTPError:
            return None
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and body.get("instance") == self.instance:
                return response.status_code
        raise NotOurApi(
            f"port {self.port} is not our API's: /health answered {response.status_code} "
            f"{response.text[:300]!r}, not instance {self.instance!r}"
        )
