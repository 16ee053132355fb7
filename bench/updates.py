"""How fast the ``job_update`` stream reads a backlog: the readers it could use, side by side.

    .venv/bin/python -m bench.updates                 # 20,000 jobs, each with a line batch
    .venv/bin/python -m bench.updates --jobs 5000     # a quick run

Self-contained: starts its own embedded NATS, publishes a history (per job: requested, running,
progress, a batch of 200 lines, an ending), then reads every update event (all but the lines) from
the start with each reader and prints the rate. The readers:

- ``next_msg, 4 filters``: nats-py's ``next_msg`` per message on a consumer filtering requested,
  status, progress and cancel (what ``job_updates`` did before ``common/subscription.py``);
- ``batched, 4 filters``: ``ordered_reader`` with the same four filters;
- ``batched, 1 wildcard``: ``ordered_reader`` on ``<prefix>.job.>``, line messages skipped by
  subject before decoding;
- ``job_updates``: what the stream uses now (``job_updates.update_messages``): the wildcard
  through the raw stream reader (line messages skipped unparsed) while catching up, then the
  four filters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import timedelta

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api

from bench.history import START, publish_all
from jobrunner.common import eventstore
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import ordered_reader
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import new_scratch_dir
from jobrunner.services.api.job_updates import update_messages

KINDS = ("requested", "status", "progress", "cancel")


def history(n_jobs: int, lines: int) -> list[events.Event]:
    out: list[events.Event] = []
    for i in range(n_jobs):
        job_id = f"job{i:07d}"
        at = START + timedelta(seconds=i)
        out += [
            events.JobRequested(job_id=job_id, job_type="scraper", occurred_at=at),
            events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=at),
            events.ProgressReported(job_id=job_id, current=1, total=2, occurred_at=at),
            events.LineLogged(
                job_id=job_id,
                lines=[
                    events.LogLine(
                        n, "stdout", "INFO", at, f"[{n}] processed https://x{n}.example/"
                    )
                    for n in range(1, lines + 1)
                ],
            ),
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=JobStatus.COMPLETED,
                occurred_at=at,
            ),
        ]
    return out


async def next_msg_filters(js: JetStreamContext, names: Names, wanted: int) -> int:
    sub = await js.subscribe(
        names.kind_subjects(KINDS[0]),
        stream=names.stream,
        ordered_consumer=True,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=1,
            filter_subjects=[names.kind_subjects(k) for k in KINDS],
        ),
        pending_msgs_limit=50_000,
    )
    got = 0
    try:
        while got < wanted:
            try:
                await sub.next_msg(timeout=10)
            except NatsTimeoutError:
                break
            got += 1
    finally:
        await sub.unsubscribe()
    return got


async def batched(js: JetStreamContext, names: Names, wanted: int, wildcard: bool) -> int:
    subjects = names.all_subjects if wildcard else [names.kind_subjects(k) for k in KINDS]
    got = 0
    async with ordered_reader(js, names.stream, subjects, start_seq=1) as reader:
        while got < wanted:
            batch = await reader.next_batch(10)
            if not batch:
                break
            got += sum(1 for m in batch if not m.subject.endswith(".lines"))
    return got


async def main(args: argparse.Namespace) -> dict[str, object]:
    root = new_scratch_dir("jobrunner-bench-updates-")
    server = EmbeddedNats(root / "nats")
    await asyncio.to_thread(server.start)
    settings = Settings(nats_url=server.url, prefix="bench")
    names = Names(settings.prefix)
    report: dict[str, object] = {"jobs": args.jobs}
    try:
        batch = history(args.jobs, args.lines)
        report["events"] = await publish_all(settings, batch)
        wanted = sum(1 for e in batch if not isinstance(e, events.LineLogged))
        report["update_events"] = wanted
        nc = await eventstore.connect(settings, "bench")
        js = nc.jetstream()

        async def hybrid() -> int:
            got = 0
            connection = NatsConnection.from_settings(settings)
            async for msgs in update_messages(
                js,
                names,
                1,
                10,
                8 * 1024 * 1024,
                connection,
                patience=settings.sse_history_idle_seconds,
            ):
                if not msgs:
                    break
                got += len(msgs)
                if got >= wanted:
                    break
            return got

        readers = {
            "next_msg, 4 filters": lambda: next_msg_filters(js, names, wanted),
            "batched, 4 filters": lambda: batched(js, names, wanted, wildcard=False),
            "batched, 1 wildcard": lambda: batched(js, names, wanted, wildcard=True),
            "job_updates": hybrid,
        }
        for name, read in readers.items():
            if args.only and name not in args.only.split(","):
                continue
            t0 = time.perf_counter()
            got = await read()
            seconds = time.perf_counter() - t0
            assert got == wanted, f"{name}: {got} of {wanted}"
            report[f"{name} (update events/s)"] = round(wanted / seconds)
            print(f"{name}: {wanted / seconds:,.0f} update events/s", flush=True)
        await eventstore.close(nc)
    finally:
        await asyncio.to_thread(server.stop)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--only", help="comma-separated reader names (default: every reader)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
