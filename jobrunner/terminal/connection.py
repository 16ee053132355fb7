"""Where the terminal client finds the server and its token, and how it talks to it.

The server comes from ``--url``, else ``JOBRUNNER_URL``, else the ``runtime.json`` a running
``jobrunner up`` keeps in its state directory; the token from ``--token``, else
``JOBRUNNER_TOKEN``. Every failure becomes a :class:`ClientError`: one sentence saying what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from jobrunner.common import exitcodes

DEFAULT_STATE_DIR = ".jobrunner"


class ClientError(Exception):
    """A sentence for the terminal, and the exit code it ends the command with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# Exit codes (README "Terminal client"): beside 0 and the tool's own exit code.
EXIT_USAGE = 2  # a bad argument, or the server refused the request
EXIT_FAILED_WITHOUT_CODE = 75  # the job failed with no exit code (timeout, runner lost, ...)
EXIT_UNREACHABLE = exitcodes.UNAVAILABLE  # no server at the address
EXIT_SERVER_ERROR = 70  # the server failed on the request (a 500: its bug, no retry mends it)
EXIT_CANCELLED = 130  # the job was cancelled (or following was interrupted)

# Answers of a server that is away (starting, or a proxy that lost it): ``logs --follow`` tries
# again. Any other 5xx is the server failing on this request, which the same request again would
# meet too.
AWAY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    found_in: str  # where the URL came from, for error messages


def find_target(
    url: str | None, token: str | None, state_dir: str | None, environ: Mapping[str, str]
) -> Target:
    token = token or environ.get("JOBRUNNER_TOKEN") or None
    if url:
        return Target(web_address(url, "--url"), token, "--url")
    if environ.get("JOBRUNNER_URL"):
        return Target(
            web_address(environ["JOBRUNNER_URL"], "JOBRUNNER_URL"), token, "JOBRUNNER_URL"
        )
    state = Path(state_dir or environ.get("JOBRUNNER_STATE_DIR") or DEFAULT_STATE_DIR)
    runtime = state / "runtime.json"
    try:
        api_url = json.loads(runtime.read_text()).get("api_url")
    except (OSError, ValueError, AttributeError):
        api_url = None
    if not isinstance(api_url, str):
        raise ClientError(
            "no jobrunner server given: pass --url (or set JOBRUNNER_URL), or run this where "
            f"`jobrunner up` keeps its state directory ({state} has no runtime.json; "
            "--state-dir names another)",
            EXIT_USAGE,
        )
    host_port = api_url.split("://", 1)[-1]
    # A server listening on every address is reached through loopback.
    for wildcard in ("0.0.0.0", "[::]"):
        if host_port.startswith(wildcard + ":"):
            api_url = "http://127.0.0.1" + host_port[len(wildcard) :]
    return Target(api_url.rstrip("/"), token, str(runtime))


def web_address(url: str, found_in: str) -> str:
    """The server's address as given, without a trailing slash; one an operator typed without
    its scheme (``localhost:8000``, the way a browser's address bar takes it) is refused with
    the address to write instead. httpx would call it an unsupported protocol, which read as
    "cannot reach jobrunner ... is it running?" (exit 69) while the server was running."""
    parts = urlsplit(url.strip())
    if parts.scheme in ("http", "https") and parts.netloc:
        return url.strip().rstrip("/")
    if parts.scheme in ("http", "https"):
        fix = "name the server's host, e.g. http://127.0.0.1:8000"
    elif "://" in url:
        fix = "jobrunner serves http:// or https:// only"
    else:
        fix = f"write it as http://{url.strip()}"
    raise ClientError(
        f"{found_in} {url!r} is not a web address with http:// or https://: {fix}", EXIT_USAGE
    )


class Api:
    """The HTTP API as the terminal client uses it: JSON in, JSON out, errors as sentences."""

    def __init__(self, target: Target, timeout: float = 30.0) -> None:
        self.target = target
        self._timeout = timeout
        self.http = self._new_client()

    def _new_client(self) -> httpx.Client:
        """A client of the target with its token, and connections of its own."""
        headers = {"Accept": "application/json"}
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        return httpx.Client(base_url=self.target.url, headers=headers, timeout=self._timeout)

    def unpooled(self) -> httpx.Client:
        """A client like ``http`` but with no connection of another request's to take: its
        first request makes a connection of its own (close it after)."""
        return self._new_client()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: Any = None) -> Any:
        return self._json(self._send("GET", path, params=params))

    def post(self, path: str, body: Any = None) -> Any:
        return self._json(self._send("POST", path, json=body))

    def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise self.refused(response)
        return response

    def unreachable(self, exc: Exception) -> ClientError:
        return ClientError(
            f"cannot reach jobrunner at {self.target.url} (from {self.target.found_in}): "
            f"{type(exc).__name__}; is it running (`jobrunner up`)?",
            EXIT_UNREACHABLE,
        )

    def refused(self, response: httpx.Response) -> ClientError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"HTTP {response.status_code}", response.text[:200]
            error = {}
        hint = "".join(field_problems(error.get("fields")))
        if response.status_code == 401:
            hint += (
                " Pass a token with --token or JOBRUNNER_TOKEN "
                "(`jobrunner token create NAME` makes one)."
            )
        elif response.status_code == 403:
            hint += " The token's role is too small: ask an admin for an operator token."
        # A 5xx but a server away (502/503/504, which ``logs --follow`` retries) is the server
        # failing on the request: no argument of the user's to mend (exit 2 said there was).
        server_failed = response.status_code >= 500 and response.status_code not in AWAY_STATUSES
        return ClientError(
            f"{message} ({code}){hint}", EXIT_SERVER_ERROR if server_failed else EXIT_USAGE
        )

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        return response.json() if response.content else None


def field_problems(fields: Any) -> list[str]:
    """One line per field the server named (INVALID_PARAMETERS' ``field``/``code``, the
    framework's ``key``): the sentence alone does not say which ``-p`` was wrong."""
    if not isinstance(fields, list):
        return []
    lines = []
    for problem in fields:
        if isinstance(problem, dict):
            name = problem.get("field") or problem.get("key") or "?"
            code = f" ({problem['code']})" if problem.get("code") else ""
            lines.append(f"\n  {name}: {problem.get('message', '')}{code}")
    return lines


def environ() -> dict[str, str]:
    return dict(os.environ)
