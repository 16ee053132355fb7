"""How long a prompt reader's held flow-control answers wait: the server's idle time per window.

    PYTHONPATH=$PWD .venv/bin/python -m bench.held_answer                 # 200,000 of 100 bytes
    PYTHONPATH=$PWD .venv/bin/python -m bench.held_answer --messages 50000 --size 1000

Self-contained: its own embedded NATS in a temporary directory. An ``ordered_reader`` that takes
every batch at once reads the whole stream from sequence 1, three times. For each read it
prints the messages a second, the process's CPU seconds, how many flow-control requests came
while messages sent before them were still queued (nats-py holds their answer) and, for each,
the milliseconds from holding the answer to its publish: the server sends nothing meanwhile.
Run it with ``PYTHONPATH`` on each tree to compare them (session 41: main's answers waited for
nats-py's look every 0.25 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import nats
from nats.js import JetStreamContext

from jobrunner.common.subscription import ordered_reader
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir

ROUNDS = 3


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(url: str, count: int, size: int) -> list[dict[str, Any]]:
    held: dict[str, float] = {}  # a held request's reply subject: when nats-py held it
    waits: list[float] = []  # seconds from holding an answer to its publish
    schedule = JetStreamContext._JSI.schedule_flow_control_response

    def hold(jsi: Any, reply: str) -> None:
        held[reply] = time.monotonic()
        schedule(jsi, reply)

    JetStreamContext._JSI.schedule_flow_control_response = hold  # type: ignore[method-assign]
    nc = await nats.connect(url)
    publish = nc.publish

    async def noting_answers(subject: str, *args: Any, **kwargs: Any) -> None:
        if subject in held:
            waits.append(time.monotonic() - held[subject])
        await publish(subject, *args, **kwargs)

    nc.publish = noting_answers  # type: ignore[method-assign]
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"])
    payload = b"x" * size
    for start in range(0, count, 2000):
        acks = [await js.publish_async("s.a", payload) for _ in range(min(2000, count - start))]
        await asyncio.gather(*acks)
    reads = []
    for _ in range(ROUNDS):
        held.clear()
        waits.clear()
        t0, cpu0, got = time.monotonic(), cpu_seconds(), 0
        async with ordered_reader(js, "S", ["s.>"], start_seq=1) as reader:
            while got < count:
                got += len(await reader.next_batch(10))
        wall = time.monotonic() - t0
        reads.append(
            {
                "messages_per_s": round(count / wall),
                "cpu_s": round(cpu_seconds() - cpu0, 2),
                "held_requests": len(held),
                "held_answer_waits_ms": sorted(round(wait * 1000, 1) for wait in waits),
            }
        )
    await nc.close()
    return reads


def main(count: int, size: int) -> None:
    with scratch_dir("jobrunner-bench-held-answer-") as root:
        server = EmbeddedNats(root / "nats")
        server.start()
        try:
            for read in asyncio.run(measure(server.url, count, size)):
                print(json.dumps(read))
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    main(args.messages, args.size)
