"""Which nats-server leaves a marker where a lock bucket entry's own TTL runs out.

    .venv/bin/python -m bench.expiry_markers --binary <nats-server> [--binary <another>]

Each binary runs on its own in a temporary directory, with a bucket made as the lock bucket is
(``eventstore.ensure_topology``: one value a key, file storage, ``limit_marker_ttl``; made here
directly, since the services refuse the servers this looks at). Written as ``SlotTable`` writes
them: a lease with ``Nats-TTL: 2s``; a lease of 2 s over a released lease's delete marker; a run
record removed by a purge with ``Nats-TTL: 1s``. Then every message the bucket stores is read for
``--wait`` seconds: a lease's marker is what a runner's lock board hears the lease expire by
(``LockBoard.watch``); a marker after the purge is one more for every runner's sweep to read.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats
from nats.aio.msg import Msg
from nats.js import api

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir

BUCKET = "locks"
LIMIT_MARKER_TTL = 60.0  # the lock bucket's at the default 15 s lease: max(60, 4 x 15)


async def markers(binary: str, wait: float) -> str:
    """One row: the server's version, then when (seconds after the writes) each marker came."""
    with scratch_dir("expiry-markers-") as root:
        server = EmbeddedNats(root, binary=binary)
        server.start()
        try:
            nc = await nats.connect(server.url)
            try:
                return await _row(nc, wait)
            finally:
                await nc.close()
        finally:
            server.stop()


async def _row(nc: nats.NATS, wait: float) -> str:
    js = nc.jetstream()
    await js.create_key_value(
        bucket=BUCKET,
        history=1,
        storage=api.StorageType.FILE,
        limit_marker_ttl=LIMIT_MARKER_TTL,
    )
    start = time.monotonic()
    came: dict[str, list[str]] = {"slot.a": [], "slot.c": [], "run.b": []}

    async def stored(msg: Msg) -> None:
        reason = (msg.headers or {}).get("Nats-Marker-Reason")
        if reason is not None:
            key = msg.subject.removeprefix(f"$KV.{BUCKET}.")
            came[key].append(f"{reason} at {time.monotonic() - start:.1f} s")

    await js.subscribe(
        f"$KV.{BUCKET}.>",
        cb=stored,
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
    )
    lease = b'{"job_id":"j","phase":"held"}'
    await js.publish(f"$KV.{BUCKET}.slot.a", lease, headers={"Nats-TTL": "2s"})
    released = {"KV-Operation": "DEL", "Nats-TTL": "60s"}
    await js.publish(f"$KV.{BUCKET}.slot.c", b"", headers=released)
    await js.publish(f"$KV.{BUCKET}.slot.c", lease, headers={"Nats-TTL": "2s"})
    await js.publish(f"$KV.{BUCKET}.run.b", b"{}")
    purged = {"KV-Operation": "PURGE", "Nats-TTL": "1s"}
    await js.publish(f"$KV.{BUCKET}.run.b", b"", headers=purged)
    await asyncio.sleep(wait)
    version = nc.connected_server_version
    cells = [", ".join(came[key]) or "none" for key in ("slot.a", "slot.c", "run.b")]
    return f"| {version.major}.{version.minor}.{version.patch} | " + " | ".join(cells) + " |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", action="append", required=True, help="a nats-server")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds to read markers")
    args = parser.parse_args()
    print("| server | lease (TTL 2 s) | lease over a delete marker | purge marker (TTL 1 s) |")
    print("|---|---|---|---|")
    for binary in args.binary:
        print(await markers(binary, args.wait), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
