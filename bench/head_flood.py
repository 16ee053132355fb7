"""An endless request header sent slowly to a running jobrunner's API (``jobrunner up``): the API's
resident memory and CPU while it comes, and what the API answered.

    python -m bench.head_flood [--megabytes 100] [--mib-per-second 8] [--seconds 120]

Before session 39 the API read a request's head without any bound (uvicorn's httptools protocol;
httptools joins a header's pieces as they arrive); since, it refuses a head past 64 KiB with 431
(jobrunner.services.api.httpprotocol).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time
from typing import Any

from bench.system import MemorySampler, RunningSystem

PIECE = 64 * 1024


def send_endless_header(
    port: int, megabytes: int, mib_per_second: float, seconds: float
) -> dict[str, Any]:
    """Sends one request whose header value is ``megabytes`` long, paced, until all is sent,
    the API answers or closes, or ``seconds`` pass."""
    total = megabytes * 1_000_000
    sent = 0
    answer = b""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        piece = b"e" * PIECE
        while sent < total and time.monotonic() - start < seconds:
            readable, _, _ = select.select([conn], [], [], 0)
            if readable:
                break
            try:
                conn.sendall(piece)
            except OSError:  # closed by the API with this unread: a reset
                break
            sent += PIECE
            # Paced: at most mib_per_second since the start.
            ahead = sent / (mib_per_second * 2**20) - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        conn.settimeout(10)
        try:
            while block := conn.recv(65536):
                answer += block
        except OSError:  # a reset after the answer, or no answer in 10 s
            pass
    return {
        "sent_mib": round(sent / 2**20, 1),
        "seconds": round(time.monotonic() - start, 1),
        "answer": answer.split(b"\r\n", 1)[0].decode("latin-1") or None,
        "answer_body": answer.partition(b"\r\n\r\n")[2][:200].decode("latin-1") or None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--mib-per-second", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    system = RunningSystem()
    system.start()
    try:
        api = system.services()["api"]
        cpu_before = sum(api.cpu_times()[:2])
        with MemorySampler({"api": api}, interval=0.05) as memory:
            result = send_endless_header(
                system.port, args.megabytes, args.mib_per_second, args.seconds
            )
            time.sleep(1)  # what the API holds just after
        result.update(
            api_rss_mib_start_end=memory.start_end("api"),
            api_rss_mib_peak=memory.mib("api"),
            api_rss_mib_profile=memory.profile("api"),
            api_cpu_seconds=round(sum(api.cpu_times()[:2]) - cpu_before, 2),
        )
    finally:
        system.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
