"""``jobrunner lock clear-unreadable <lock>``: free a lock slot held by a value that no jobrunner
wrote (put by hand, corrupt), which counts as held until deleted and, put without a TTL, never
expires. A readable lease is never touched, whoever holds it.

NATS is found from the settings, else from ``<state_dir>/runtime.json`` of a running
``jobrunner up`` (as for ``jobrunner token``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from nats.js.errors import BucketNotFoundError

from jobrunner import oneshot
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, slot_key
from jobrunner.contracts.names import Names


async def run(settings: Settings, args: argparse.Namespace) -> int:
    nc = await oneshot.connect(settings, "jobrunner-lock-cli")
    try:
        slots = SlotTable(nc.jetstream(), Names(settings.prefix), settings.lease_ttl_seconds)
        key = slot_key(args.lock, "")
        try:
            outcome, lease = await slots.clear_unreadable(key)
        except BucketNotFoundError:
            print("no lock bucket yet (no jobrunner has run here): nothing to do", file=sys.stderr)
            return 1
    finally:
        await eventstore.close(nc)
    if outcome == "cleared":
        print(f"{key}: held by a value that cannot be read; deleted, the slot is free")
        return 0
    if outcome == "free":
        print(f"{key}: holds nothing; nothing to do")
        return 0
    if outcome == "readable":
        assert lease is not None
        holder = lease.value
        print(
            f"{key}: a readable lease ({holder.phase}, job {holder.job_id}, runner "
            f"{holder.runner_id or '-'}); left alone: it ends with its job or expires",
            file=sys.stderr,
        )
        return 1
    print(f"{key}: written meanwhile; left alone (run the command again)", file=sys.stderr)
    return 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    locks, common = oneshot.add_command(sub, "lock", "repair the lock bucket")
    clear = locks.add_parser(
        "clear-unreadable",
        help="free a lock's slot if what holds it cannot be read (never a readable lease)",
        parents=[common],
    )
    clear.add_argument("lock", help="the lock's name, as in the job types file")


def main(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(run(settings, args))
