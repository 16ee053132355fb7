"""An example external worker: does its work here and reports it to jobrunner over HTTP.

Start an external job (a job type with ``external = true``); the answer carries the job's
``callback_url`` and ``callback_token``, shown once. Hand both to the worker:

    JOBRUNNER_CALLBACK_TOKEN=<callback_token> python examples/external_worker.py <callback_url>

It reports a few progress steps with log lines, attaches a file (``summary.txt``, an artifact of
the job), then a result, and stops. Python's standard
library only, so it runs wherever the work is. What it shows a real worker should do:

- wait while the job waits for its lock (``409 JOB_WAITING`` with ``Retry-After``);
- give every report a ``report_id`` and send it again after a network error or a 5xx: jobrunner
  stores it once;
- stop working when told the job ended (``409 JOB_FINISHED``: cancelled, timed out, lost);
- report more often than the job type's ``heartbeat_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

RETRY_PAUSE_SECONDS = 1.0
MAX_TRIES = 30


class JobFinished(Exception):
    """jobrunner says the job ended: stop working on it."""


def report(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one report until jobrunner has stored it; raises JobFinished when the job ended."""
    body = {"report_id": uuid.uuid4().hex, **body}  # the same id on every retry
    data = json.dumps(body).encode()
    for _ in range(MAX_TRIES):
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read() or b"{}").get("error", {})
            code = error.get("code")
            if exc.code == 409 and code == "JOB_WAITING":
                time.sleep(float(exc.headers.get("Retry-After", RETRY_PAUSE_SECONDS)))
                continue
            if exc.code == 409 and code == "JOB_FINISHED":
                raise JobFinished(error.get("message", "the job ended")) from None
            if exc.code < 500:
                raise SystemExit(
                    f"report refused: {exc.code} {code}: {error.get('message')}"
                ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            print(f"jobrunner not reachable ({exc}); trying again", file=sys.stderr)
        time.sleep(RETRY_PAUSE_SECONDS)
    raise SystemExit(f"gave up after {MAX_TRIES} tries")


def attach(url: str, token: str, name: str, data: bytes) -> None:
    """Store ``data`` as the job's artifact ``name`` (before the final report). Sending the
    same file again after a network error or a 5xx stores it once."""
    for _ in range(MAX_TRIES):
        request = urllib.request.Request(
            f"{url}/artifacts/{urllib.parse.quote(name)}",
            data=data,
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60):
                return
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read() or b"{}").get("error", {})
            if exc.code == 409 and error.get("code") == "JOB_FINISHED":
                raise JobFinished(error.get("message", "the job ended")) from None
            if exc.code < 500:
                raise SystemExit(f"file refused: {exc.code} {error.get('code')}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            print(f"jobrunner not reachable ({exc}); trying again", file=sys.stderr)
        time.sleep(RETRY_PAUSE_SECONDS)
    raise SystemExit(f"gave up after {MAX_TRIES} tries")


def work(url: str, token: str, steps: int, pause: float) -> None:
    report(url, token, {"progress": {"phase": "start", "current": 0, "total": steps}})
    for step in range(1, steps + 1):
        time.sleep(pause)  # the real work goes here
        report(
            url,
            token,
            {
                "progress": {"phase": "work", "current": step, "total": steps},
                "lines": [{"text": f"step {step} of {steps} done"}],
            },
        )
    attach(url, token, "summary.txt", f"{steps} steps done\n".encode())
    report(
        url,
        token,
        {"lines": [{"text": "all done", "level": "SUCCESS"}], "result": {"steps": steps}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("callback_url", help="the callback_url from the job's 201 answer")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds per step")
    args = parser.parse_args()
    token = os.environ.get("JOBRUNNER_CALLBACK_TOKEN")
    if not token:
        raise SystemExit("set JOBRUNNER_CALLBACK_TOKEN to the job's callback_token")
    try:
        work(args.callback_url, token, args.steps, args.pause)
    except JobFinished as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    print("reported", file=sys.stderr)


if __name__ == "__main__":
    main()
