"""``jobrunner health``: ``GET /health`` for a person at a shell, and an exit code for a script
or a cron job: 0 ok, 1 degraded (it serves; something behind it needs attention), 2 unavailable
(it answered, but cannot reach NATS or Postgres), and 69 when no jobrunner answers at all, as
for every other command (``EXIT_UNREACHABLE``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from rich.console import Console
from rich.text import Text

from jobrunner.terminal.connection import EXIT_UNREACHABLE, Api, ClientError

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_UNAVAILABLE = 2  # the server answered: it cannot reach NATS or Postgres

STATUS_STYLES = {"ok": "bold green", "degraded": "bold yellow", "unavailable": "bold red"}
EXIT_CODES = {"ok": EXIT_OK, "degraded": EXIT_DEGRADED, "unavailable": EXIT_UNAVAILABLE}


def health(api: Api, as_json: bool) -> int:
    """Print the server's health; its exit code."""
    body = answer(api)
    status = str(body.get("status"))
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        show(api.target.url, body)
    return EXIT_CODES[status]  # ``answer`` let no other status through


def answer(api: Api) -> dict[str, Any]:
    """``/health``'s body: a 503 carries one too (unavailable). No answer, or one that is not
    jobrunner's health (a proxy's error page): ``ClientError`` with exit code 69."""
    try:
        response = api.http.get("/health")  # needs no token; a 503 is an answer too
    except httpx.TransportError as exc:
        raise api.unreachable(exc) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in EXIT_CODES:
        raise ClientError(
            f"{api.target.url}/health answered HTTP {response.status_code} without jobrunner's "
            "health report: is this the jobrunner server (not a proxy's error page)?",
            EXIT_UNREACHABLE,
        )
    return body


def show(url: str, body: dict[str, Any]) -> None:
    console = Console(highlight=False)
    status = str(body["status"])
    line = Text(f"{url}: ")
    line.append(status, style=STATUS_STYLES.get(status, ""))
    if body.get("instance"):  # which API instance answered (behind a load balancer: one of them)
        line.append(f" (instance {body['instance']})")
    console.print(line)
    for problem in body.get("problems") or []:
        code = str(problem.get("code", "?"))
        console.print(Text(f"  {code}: ", style="bold").append(str(problem.get("message", ""))))
