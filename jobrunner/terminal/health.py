"""``jobrunner health``: ``GET /health`` for a person at a shell, and an exit code for a script
or a cron job: 0 ok, 1 degraded (it serves; something behind it needs attention), 2 not serving
(``unavailable``: it cannot reach NATS or Postgres) or not reachable at all."""

from __future__ import annotations

import json
from typing import Any

import httpx
from rich.console import Console
from rich.text import Text

from jobrunner.terminal.connection import Api, ClientError

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_NOT_SERVING = 2  # unavailable, or no answer

STATUS_STYLES = {"ok": "bold green", "degraded": "bold yellow", "unavailable": "bold red"}
EXIT_CODES = {"ok": EXIT_OK, "degraded": EXIT_DEGRADED, "unavailable": EXIT_NOT_SERVING}


def health(api: Api, as_json: bool) -> int:
    """Print the server's health; its exit code."""
    body = answer(api)
    status = str(body.get("status"))
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        show(api.target.url, body)
    return EXIT_CODES.get(status, EXIT_NOT_SERVING)


def answer(api: Api) -> dict[str, Any]:
    """``/health``'s body: a 503 carries one too (unavailable). No answer, or one that is not
    jobrunner's health (a proxy's error page): ``ClientError`` with exit code 2."""
    try:
        response = api.http.get("/health")  # needs no token; a 503 is an answer too
    except httpx.TransportError as exc:
        error = api.unreachable(exc)
        raise ClientError(str(error), EXIT_NOT_SERVING) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in EXIT_CODES:
        raise ClientError(
            f"{api.target.url}/health answered HTTP {response.status_code} without jobrunner's "
            "health report: is this the jobrunner server (not a proxy's error page)?",
            EXIT_NOT_SERVING,
        )
    return body


def show(url: str, body: dict[str, Any]) -> None:
    console = Console(highlight=False)
    status = str(body["status"])
    line = Text(f"{url}: ")
    line.append(status, style=STATUS_STYLES.get(status, ""))
    console.print(line)
    for problem in body.get("problems") or []:
        code = str(problem.get("code", "?"))
        console.print(Text(f"  {code}: ", style="bold").append(str(problem.get("message", ""))))
