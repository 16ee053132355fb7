"""Reading a backlog: the hand-written stream reader against nats-py's ordered consumer.

    .venv/bin/python -m bench.stream_reading                 # 200,000 events of 200 bytes
    .venv/bin/python -m bench.stream_reading --events 50000

Self-contained: its own embedded NATS in a temporary directory. Reads the whole backlog from
sequence 1 with each reader in turn (three rounds, alternating) and prints events per second.
Only reading is measured: no decoding, no Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats

from jobrunner.common import eventstore
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import StreamReader
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir


async def fill(settings: Settings, count: int, size: int) -> None:
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    payload = b"x" * size
    for start in range(0, count, 2000):
        acks = [
            await js.publish_async(f"{settings.prefix}.job.j{n % 50}.lines", payload)
            for n in range(start, min(start + 2000, count))
        ]
        await asyncio.gather(*acks)
    await eventstore.close(nc)


async def with_stream_reader(settings: Settings, count: int) -> float:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "bench")
    connection = NatsConnection.from_settings(settings)
    reader = StreamReader(
        nc.jetstream(), connection.servers, names.stream, names.all_subjects, connection=connection
    )
    started = time.perf_counter()
    await reader.open(1)
    seen = 0
    async for batch in reader.batches():
        seen += len(batch)
        if seen >= count:
            break
    elapsed = time.perf_counter() - started
    await reader.close()
    await eventstore.close(nc)
    return count / elapsed


async def with_ordered_consumer(settings: Settings, count: int) -> float:
    names = Names(settings.prefix)
    nc = await nats.connect(**NatsConnection.from_settings(settings).nats_py_options())
    js = nc.jetstream()
    started = time.perf_counter()
    sub = await js.subscribe(names.all_subjects, ordered_consumer=True, pending_msgs_limit=-1)
    seen = 0
    while seen < count:
        await sub.next_msg(timeout=10)
        seen += 1
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    return count / elapsed


async def main(count: int, size: int, rounds: int) -> None:
    with scratch_dir("jobrunner-bench-reading-") as root:
        server = EmbeddedNats(root / "nats")
        server.start()
        try:
            settings = Settings(nats_url=server.url, prefix="bench")
            await fill(settings, count, size)
            results: dict[str, list[float]] = {"stream reader": [], "ordered consumer": []}
            for _ in range(rounds):
                results["stream reader"].append(await with_stream_reader(settings, count))
                results["ordered consumer"].append(await with_ordered_consumer(settings, count))
            for name, rates in results.items():
                shown = ", ".join(f"{r:,.0f}" for r in rates)
                print(f"{name:>16}: best {max(rates):>9,.0f} events/s  (rounds: {shown})")
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.size, args.rounds))
