"""The live projector's line path in instructions: ``python -m bench.projector_lines_cost``.

Row 3b (lines into Postgres) is bound by the projector and its Postgres backend, and its wall
figure moves with the host's load by more than any saving of the projector's Python work per
line. This harness counts the instructions the projector process executes to apply a flood,
as ``bench.replay_cost`` does for the replay: a running system (``jobrunner up``) runs the
bench's flood tool (``bench_flood``, 80-byte lines) for ``--lines`` lines and its live projector
stores them; then for each ``--tree`` a child process runs ``run_projector`` from that tree
(``PYTHONPATH=<tree>``) over the same stream into a fresh database of the same Postgres: once
plainly, once under ``valgrind --tool=callgrind``. The child calls ``os.sched_yield()`` as its
feed opens and ``os.getpgrp()`` once the batch that reaches the stream's end is applied:
callgrind zeroes its counts before the first and dumps them before the second, so the dump holds
the reading, decoding, projecting, ``COPY`` and checkpoint work of the whole stream (start-up
and schema creation left out). The stream is mostly the flood's lines, a few events besides.

Every child's ``log_lines`` and ``jobs`` must equal the live projector's (an md5 of their rows
in key order), or the harness fails: a cut that changed a stored value does not count.

    git archive main | tar -x -C /tmp/base
    python -m bench.projector_lines_cost --tree /tmp/base --tree .
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LINES = 200_000
# The rows a child wrote, in key order, as one digest per table (every column, as text).
DIGESTS = {
    "log_lines": "SELECT md5(string_agg(l::text, E'\\n' ORDER BY job_id, seq)) "
    "FROM readmodel.log_lines AS l",
    "jobs": "SELECT md5(string_agg(j::text, E'\\n' ORDER BY id)) FROM readmodel.jobs AS j",
}


# A bound on each wait for the live system, far above a flood's time to be stored (a 200,000-line
# flood took 20 s at load 15; a million lines, five times that): past it the harness fails
# saying what it waited for, rather than wait for ever.
WAIT_SECONDS = 900.0
POLL_SECONDS = 0.2


async def wait_for_flood(db: Any, job: str, lines: int, limit: float = WAIT_SECONDS) -> None:
    """Until the live projector holds the flood job's ``lines`` lines (the counted projectors
    compare their rows with its). Fails as soon as the job ended short of them or failed or was
    cancelled, and after ``limit`` seconds."""
    from jobrunner.contracts.events import TERMINAL_STATUSES

    query = "SELECT status, log_count FROM readmodel.jobs WHERE id = $1"
    deadline = time.monotonic() + limit
    while True:
        row = await db.fetchrow(query, job)
        status, stored = (row["status"], row["log_count"]) if row else ("not projected", 0)
        held = f"the live projector holds {stored:,} of its {lines:,} lines"
        if status in TERMINAL_STATUSES and (status != "completed" or stored < lines):
            raise RuntimeError(f"the flood job {job} ended {status}: {held}")
        if stored >= lines:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"waited {limit:g} s for the flood job {job} ({status}) to be stored: {held}"
            )
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_checkpoint(db: Any, last_seq: int, limit: float = WAIT_SECONDS) -> None:
    """Until the live projector's checkpoint is at the stream's last sequence ``last_seq``;
    fails after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        at = await db.fetchval("SELECT last_seq FROM readmodel.checkpoint") or 0
        if at >= last_seq:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"waited {limit:g} s for the live projector's checkpoint to reach the stream's "
                f"last sequence {last_seq:,}: it is at {at:,}"
            )
        await asyncio.sleep(POLL_SECONDS)


def _child(out: str, last_seq: int) -> None:
    """Run in the tree under test: the live projector from an empty database to ``last_seq``."""
    import asyncpg

    from jobrunner.common.settings import load_settings
    from jobrunner.services.projector import service

    settings = load_settings()
    stop = asyncio.Event()
    applying: dict[str, float] = {}
    start = service.EventFeed.start
    apply_until_done = service._apply_until_done

    async def marked_start(self: Any, *args: Any, **kwargs: Any) -> bool:
        os.sched_yield()  # callgrind: --zero-before=sched_yield
        applying["cpu0"] = time.process_time()
        return await start(self, *args, **kwargs)

    async def marked_apply(*args: Any, **kwargs: Any) -> int | None:
        applied = await apply_until_done(*args, **kwargs)
        if applied is not None and applied >= last_seq and not stop.is_set():
            applying["cpu_s"] = time.process_time() - applying["cpu0"]
            os.getpgrp()  # callgrind: --dump-before=getpgrp
            stop.set()
        return applied

    service.EventFeed.start = marked_start  # type: ignore[method-assign]
    service._apply_until_done = marked_apply

    async def run() -> dict[str, str]:
        await service.run_projector(settings, stop)
        conn = await asyncpg.connect(settings.database_url)
        try:
            return {table: await conn.fetchval(sql) for table, sql in DIGESTS.items()}
        finally:
            await conn.close()

    digests = asyncio.run(run())
    if "cpu_s" not in applying:
        raise SystemExit(f"the projector stopped before stream sequence {last_seq}")
    Path(out).write_text(
        json.dumps(
            {
                "applying_cpu_s": applying["cpu_s"],
                "process_cpu_s": time.process_time(),
                "digests": digests,
            }
        )
    )


def _run_child(
    tree: Path, env: dict[str, str], last_seq: int, callgrind: Path | None
) -> dict[str, Any]:
    # Here, not at the top: the child loads this file with the tree's ``bench`` on its path,
    # which may not have the helper.
    from bench.callgrind_count import COUNTED_ENV, counted_argv, dumped_instructions

    with tempfile.TemporaryDirectory(prefix="lines-cost-") as scratch:
        out = Path(scratch) / "out.json"
        # By its path, not ``-m``: the tree's ``jobrunner`` is imported, whatever its bench holds.
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", out, str(last_seq)]
        child_env = env | {"PYTHONPATH": str(tree)}
        if callgrind is not None:
            argv = counted_argv(list(map(str, argv)), callgrind)
            child_env |= COUNTED_ENV
        result = subprocess.run(
            list(map(str, argv)), env=child_env, cwd=tree, capture_output=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"the projector in {tree} failed: {result.stderr.decode()[-3000:]}")
        figures: dict[str, Any] = json.loads(out.read_text())
    if callgrind is not None:
        figures["applying_instructions"] = dumped_instructions(callgrind)
    return figures


async def _flood(system: Any, lines: int) -> dict[str, Any]:
    """Run the flood and wait until the live projector holds it; the stream's last sequence,
    the live tables' digests."""
    import asyncpg
    import httpx

    from bench import settle
    from bench.scenarios import start_job
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings
    from jobrunner.contracts.names import Names

    async with httpx.AsyncClient(base_url=system.base_url, headers=system.headers) as http:
        job = await start_job(http, "bench_flood", {"lines": lines})
    db = await asyncpg.connect(system.runtime["database_url"])
    try:
        await wait_for_flood(db, job, lines)
        await settle.settle(system, "the counted projectors")
        settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
        nc = await eventstore.connect(settings, "bench")
        try:
            info = await nc.jetstream().stream_info(Names(system.prefix).stream)
        finally:
            await eventstore.close(nc)
        last_seq = int(info.state.last_seq)
        await wait_for_checkpoint(db, last_seq)
        digests = {table: await db.fetchval(sql) for table, sql in DIGESTS.items()}
    finally:
        await db.close()
    return {
        "job": job,
        "last_seq": last_seq,
        "events": int(info.state.messages),
        "digests": digests,
    }


async def _fresh_database(system: Any, name: str) -> str:
    """A new empty database on the system's Postgres; its URL."""
    import asyncpg

    url: str = system.runtime["database_url"]
    db = await asyncpg.connect(url)
    try:
        await db.execute(f'CREATE DATABASE "{name}"')
    finally:
        await db.close()
    return url.rsplit("/", 1)[0] + "/" + name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.projector_lines_cost", description=__doc__
    )
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES, help="the flood's lines")
    parser.add_argument(
        "--tree", action="append", type=Path, help="a source tree to measure (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="counted runs per tree")
    parser.add_argument("--no-callgrind", action="store_true", help="CPU seconds only")
    parser.add_argument("--dumps", type=Path, help="keep callgrind's dumps here")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    if not args.no_callgrind and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind), or use --no-callgrind")
    from bench.system import RunningSystem

    trees = [tree.resolve() for tree in args.tree or [ROOT]]
    system = RunningSystem()
    results: dict[str, Any] = {"lines": args.lines, "runs": []}
    try:
        system.start()
        flood = asyncio.run(_flood(system, args.lines))
        results |= flood
        lines, events = args.lines, flood["events"]
        for round_ in range(args.repeat):
            for place, tree in enumerate(trees, start=1):
                for counted in (False, True) if not args.no_callgrind else (False,):
                    k = len(results["runs"])
                    url = asyncio.run(_fresh_database(system, f"lines_cost_{k}"))
                    env = system.env | system.runtime_env() | {"JOBRUNNER_DATABASE_URL": url}
                    dump = system.tmp / f"callgrind.{k}" if counted else None
                    load = os.getloadavg()[0]
                    figures = _run_child(tree, env, flood["last_seq"], dump)
                    if figures["digests"] != flood["digests"]:
                        raise RuntimeError(
                            f"{tree} wrote other rows than the live projector: "
                            f"{figures['digests']} against {flood['digests']}"
                        )
                    run = {"tree": str(tree), "round": round_, "callgrind": counted}
                    run |= {"load": round(load, 2)} | figures
                    run["applying_cpu_us_per_line"] = round(
                        figures["applying_cpu_s"] / lines * 1e6, 3
                    )
                    if counted:
                        run["instructions_per_line"] = round(
                            figures["applying_instructions"] / lines
                        )
                        if args.dumps is not None:
                            args.dumps.mkdir(parents=True, exist_ok=True)
                            kept = args.dumps / f"callgrind.{place}.{round_}.{tree.name}"
                            shutil.copyfile(f"{dump}.1", kept)
                            run["dump"] = str(kept)
                    results["runs"].append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
    finally:
        system.stop()
    print(f"stream: {events:,} events, {lines:,} lines of the flood")
    for run in results["runs"]:
        if run["callgrind"]:
            print(
                f"{run['tree']}: {run['instructions_per_line']:,} instructions per line "
                f"({run['applying_instructions']:,})"
            )
        else:
            print(
                f"{run['tree']}: {run['applying_cpu_us_per_line']} µs of CPU per line "
                f"(load {run['load']})"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv and sys.path and Path(sys.path[0]).name == "bench":
        del sys.path[0]  # run by path: the tree's modules, not bench's, by their plain names
    sys.exit(main())
