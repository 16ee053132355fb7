"""The SSE clients of bench/tools/sseclients.c in Python: bench/sse.py's SseClient, all streams in
one asyncio process; the same arguments, input and output (see the C file's header). The bench
runs it where the machine has no C compiler, and to compare the two (``--python-sse-clients``).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.sse import SseClient, StreamRefused, open_stream


@dataclass
class Spec:
    host: str
    port: int
    path: str
    resume: bool
    record: bool
    headers: dict[str, str] = field(default_factory=dict)


def parse_line(line: str, number: int, resume: bool, record: bool) -> Spec:
    fields = line.split("\t")
    if len(fields) < 4:
        sys.exit(f"sseclients: line {number}: HOST, PORT, PATH and OPTIONS, tab-separated")
    host, port, path, options, *headers = fields
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        sys.exit(f"sseclients: line {number}: port {port} is not 1-65535")
    for option in options.split(",") if options not in ("", "-") else ():
        if option in ("resume", "no-resume"):
            resume = option == "resume"
        elif option in ("delays", "no-delays"):
            record = option == "delays"
        else:
            sys.exit(f"sseclients: line {number}: unknown option {option}")
    spec = Spec(host, int(port), path, resume, record)
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name:
            sys.exit(f"sseclients: line {number}: a header is Name: value")
        spec.headers[name] = value.removeprefix(" ")
    return spec


def read_list(stream: Iterable[str], resume: bool, record: bool) -> tuple[list[Spec], bool]:
    """The streams, and whether an empty line ended the list (stdin then signals the stop)."""
    specs: list[Spec] = []
    for number, raw in enumerate(stream, 1):
        line = raw.rstrip("\r\n")
        if not line:
            return specs, True
        specs.append(parse_line(line, number, resume, record))
    return specs, False


def say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    if args.list:
        listing = Path(args.list).read_text().splitlines()
        specs, watch_stdin = read_list(listing, args.resume, not args.no_delays)[0], False
    else:
        specs, watch_stdin = read_list(sys.stdin, args.resume, not args.no_delays)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.connecting)
    clients: list[SseClient | None] = [None] * len(specs)
    endings: list[tuple[str, int]] = [("", 0)] * len(specs)
    stopped = asyncio.Event()

    async def open_one(i: int, spec: Spec) -> None:
        async with gate:
            if stopped.is_set():
                endings[i] = ("closed", 0)
                return
            try:
                client = await open_stream(
                    spec.host,
                    spec.port,
                    spec.path,
                    spec.headers,
                    resume=spec.resume,
                    open_seconds=args.open_seconds,
                )
            except StreamRefused as refused:
                endings[i] = ("status" if refused.status else "error", refused.status)
                say(f"failed {i} {refused.status}\n")
                return
            except OSError:
                endings[i] = ("error", 0)
                say(f"failed {i} 0\n")
                return
        client.record_delays = spec.record
        client.max_resumes = args.max_resumes
        clients[i] = client

    def stop() -> None:
        stopped.set()
        for client in clients:
            if client is not None:
                client.close()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    if watch_stdin:

        def on_stdin() -> None:
            if not os.read(sys.stdin.fileno(), 512):
                loop.remove_reader(sys.stdin.fileno())
                stop()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
    await asyncio.gather(*(open_one(i, spec) for i, spec in enumerate(specs)))
    say("ready\n")
    if stopped.is_set():
        stop()  # the clients opened after the stop
    await asyncio.gather(*(c.done for c in clients if c is not None))
    report(args, specs, clients, endings)


def report(
    args: argparse.Namespace,
    specs: list[Spec],
    clients: list[SseClient | None],
    endings: list[tuple[str, int]],
) -> None:
    delays: array.array[float] = array.array("d")
    out = []
    for i, (spec, client) in enumerate(zip(specs, clients, strict=True)):
        if client is None:
            ended, status = endings[i]
            out.append(
                {
                    "index": i,
                    "status": status,
                    "ended": ended,
                    "lines": 0,
                    "next_seq": 1,
                    "gaps": 0,
                    "duplicates": 0,
                    "resumes": 0,
                    "record_delays": spec.record,
                    "delays": 0,
                    "first_line_at": None,
                    "last_id": None,
                    "error": "",
                }
            )
            continue
        delays.extend(client.delays)
        out.append(
            {
                "index": i,
                "status": client.status,
                "ended": client.ended or "closed",
                "lines": client.lines,
                "next_seq": client.next_seq,
                "gaps": client.gaps,
                "duplicates": client.duplicates,
                "resumes": client.resumes,
                "record_delays": client.record_delays,
                "delays": len(client.delays),
                "first_line_at": client.first_line_at,
                "last_id": client.last_id.decode() if client.last_id is not None else None,
                "error": "",
            }
        )
    if args.delays:
        Path(args.delays).write_bytes(delays.tobytes())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "clients": out,
        "cpu_user_s": usage.ru_utime,
        "cpu_system_s": usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
    }
    say(json.dumps(summary) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="sseclients", description=__doc__)
    parser.add_argument("--list")
    parser.add_argument("--delays")
    parser.add_argument("--connecting", type=int, default=50)
    parser.add_argument("--max-resumes", type=int, default=20)
    parser.add_argument("--open-seconds", type=float, default=30.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-delays", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
