"""An example consumer: prints every failed job with its last ten lines.

It follows the event stream with its own durable JetStream consumer, so it can stop and start
again without missing a failure, and it depends on nothing of jobrunner but the public
``contracts`` package (events, subject names, codec) and nats-py.

    python examples/failed_jobs.py --nats-url nats://127.0.0.1:4222 --prefix jobrunner

Beside ``jobrunner up`` the URL (its own port, with a password) is only in
``<state_dir>/runtime.json``: see the README's "Event contracts" for the command that reads it.

The first start reads the whole history (every failure ever); later starts continue where the
consumer stopped. Event types and fields newer than this code are skipped without complaint.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections import deque

import nats
from nats.js import api

from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names

LAST_LINES = 10


class FailedJobs:
    """Keeps each running job's last lines; reports a job when it fails."""

    def __init__(self) -> None:
        self._tails: dict[str, deque[events.LogLine]] = {}

    def handle(self, event: events.AnyEvent) -> str | None:
        """The report for ``event`` if it ends a job as failed, else ``None``."""
        if isinstance(event, events.LineLogged):
            tail = self._tails.setdefault(event.job_id, deque(maxlen=LAST_LINES))
            tail.extend(event.lines)
            return None
        if isinstance(event, events.StatusChanged) and event.status.is_terminal:
            tail = self._tails.pop(event.job_id, deque())
            if event.status != events.JobStatus.FAILED:
                return None
            reason = f"{event.error.code}: {event.error.message}" if event.error else "failed"
            lines = [f"  {ln.seq:>6} {ln.level:<7} {ln.text}" for ln in tail] or ["  (no output)"]
            when = event.occurred_at.isoformat(timespec="seconds")
            return "\n".join([f"FAILED {event.job_id} at {when} ({reason})", *lines])
        return None


async def follow(nats_url: str, prefix: str, durable: str, stop: asyncio.Event) -> None:
    names = Names(prefix)
    # nats-py tries a first connect for ever too (max_reconnect_attempts=-1): a server not up
    # yet is waited for, and a stop meanwhile (Ctrl-C, SIGTERM) ends the wait.
    connecting = asyncio.ensure_future(nats.connect(nats_url, max_reconnect_attempts=-1))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        connecting.cancel()
        return
    nc = connecting.result()
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "",
        durable=durable,
        stream=names.stream,
        config=api.ConsumerConfig(
            # Only what this consumer needs: lines and status changes, not requests or progress.
            filter_subjects=[names.kind_subjects("lines"), names.kind_subjects("status")],
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
        ),
    )
    failed = FailedJobs()
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except TimeoutError:  # nats' own and asyncio's
                continue
            for msg in msgs:
                event = codec.decode(msg.data)  # None: an event type newer than this code
                report = failed.handle(event) if event is not None else None
                if report:
                    print(report, flush=True)
                await msg.ack()
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nats-url", default=os.environ.get("JOBRUNNER_NATS_URL", "nats://127.0.0.1:4222")
    )
    parser.add_argument("--prefix", default=os.environ.get("JOBRUNNER_PREFIX", "jobrunner"))
    parser.add_argument("--durable", default=None, help="consumer name (<prefix>_failed_jobs)")
    args = parser.parse_args()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await follow(args.nats_url, args.prefix, args.durable or f"{args.prefix}_failed_jobs", stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
