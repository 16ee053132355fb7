"""The replay's loading, counted in instructions: ``python -m bench.replay_cost``.

Wall and CPU time on a shared two-core host move by two times with its load, so a small saving
of the replay's Python work per event never showed in pairs of runs. Instructions executed do
not move with the load: this harness counts those of the replay process's loading (reading the
stream, decoding, projecting, the ``COPY`` rows) under ``valgrind --tool=callgrind``, one run
per tree, and also reports plain CPU seconds of the loading (which do move with the load).

A running system (the bench's ``RunningSystem``: ``jobrunner up``, its nats-server and
Postgres) gets the bench's history (``workload.history``, ten events a job, the first job a
long log), with the runners' request consumer paused first (``_runner_paused``): the stream
holds the history and nothing else, the same every run. The live projector catches up,
``settle`` waits for the rest, then for each
``--tree`` a child process runs ``replay.replay`` from that tree (``PYTHONPATH=<tree>``): once
plainly, once under callgrind. The child calls ``os.sched_yield()`` as the loading begins and
``os.getpgrp()`` as it ends (``replay._load`` wrapped): callgrind zeroes its counts before the
first (``--zero-before=sched_yield``) and dumps them before the second, so the dump holds the
loading's instructions alone, start-up imports and index builds left out. Every replay must
end with its tables equal to the live ones (its own ``compare``), or the harness fails.

Compare two trees: ``git worktree add --detach /tmp/base main`` (or ``git archive``), then
``python -m bench.replay_cost --tree /tmp/base --tree .``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EVENTS = 200_000
# glibc's mmap threshold fixed (it otherwise grows with what was freed): asyncpg's COPY buffer,
# grown by realloc, is then always mapped and moved by mremap, never copied by a realloc whose
# copying or not depended on the heap's layout (±300 instructions an event from run to run).
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
RUNNER_START_SECONDS = 60.0  # `jobrunner up`'s own wait for its services (up_ready_timeout)


def _child(out: str) -> None:
    """Run in the tree under test: one replay, its loading marked for callgrind."""
    from jobrunner.common.settings import load_settings
    from jobrunner.services.projector import replay

    loading: dict[str, float] = {}
    load = replay._load

    async def marked_load(*args: Any, **kwargs: Any) -> Any:
        os.sched_yield()  # callgrind: --zero-before=sched_yield
        cpu0 = time.process_time()
        try:
            return await load(*args, **kwargs)
        finally:
            loading["cpu_s"] = time.process_time() - cpu0
            os.getpgrp()  # callgrind: --dump-before=getpgrp

    replay._load = marked_load
    report = asyncio.run(replay.replay(load_settings()))
    if report.differences:
        raise SystemExit(f"the rebuilt read models differ: {report.differences}")
    Path(out).write_text(
        json.dumps(
            {
                "events": report.events,
                "loading_cpu_s": loading["cpu_s"],
                "process_cpu_s": _own_cpu(),
                "phases": report.phases,
            }
        )
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_child(
    tree: Path, env: dict[str, str], callgrind: Path | None, profile: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="replay-cost-") as scratch:
        out = Path(scratch) / "out.json"
        # By its path, not ``-m``: the tree's ``jobrunner`` is imported, whatever its bench holds.
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(out)]
        if callgrind is not None:
            argv = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={callgrind}",
                "--zero-before=sched_yield",
                "--dump-before=getpgrp",
                *argv,
            ]
        elif profile is not None:
            # py-spy's folded stacks, for where the loading's Python work goes (not counted).
            argv = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(profile),
                "--",
                *argv,
            ]
        child_env = env | {"PYTHONPATH": str(tree)}
        if callgrind is not None:
            # Counted runs only (the plain CPU-second runs run as `jobrunner replay` does): one
            # hash seed, since string hashes decide how many probes a dict or set look-up takes
            # (~0.1 % of the count moving from run to run otherwise), and a fixed mmap threshold.
            child_env |= {"PYTHONHASHSEED": "0", **MALLOC_FIXED}
        result = subprocess.run(argv, env=child_env, cwd=tree, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the replay in {tree} failed: {result.stderr.decode()[-3000:]}")
        figures: dict[str, Any] = json.loads(out.read_text())
    if callgrind is not None:
        figures["loading_instructions"] = dumped_instructions(Path(f"{callgrind}.1"))
    return figures


def dumped_instructions(dump: Path) -> int:
    """The instructions (``Ir``) of callgrind's dump at the loading's end."""
    text = dump.read_text(errors="replace")
    if "Trigger: --dump-before=getpgrp" not in text:
        raise RuntimeError(f"{dump} is not the loading's dump")
    return int(re.search(r"^summary: (\d+)", text, re.M).group(1))  # type: ignore[union-attr]


async def _publish_and_settle(system: Any, jobs: int) -> int:
    import asyncpg

    from bench import settle, workload
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings
    from jobrunner.contracts.names import Names

    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    db = await asyncpg.connect(system.runtime["database_url"])
    try:
        await _runner_paused(js, names)
        published = await workload.publish_history(js, names, jobs)
        checkpoint = "SELECT last_seq FROM readmodel.checkpoint"
        while True:  # the live projector holds every event: the replays compare with it
            if await db.fetchval(checkpoint) >= published["last_seq"]:
                break
            await asyncio.sleep(0.2)
        await settle.settle(system, "the replays", paused=("runner",))
    finally:
        await db.close()
        await eventstore.close(nc)
    return await _history_unchanged(system, int(published["events"]), "before the replays")


async def _history_unchanged(system: Any, published: int, when: str) -> int:
    """The stream's event count, failing unless it holds exactly the ``published`` events and
    the runners' request consumer, still paused, delivered none: the count is of this history
    alone, or it compares nothing. Asked before the replays and again after them."""
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings
    from jobrunner.contracts.names import Names

    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench")
    try:
        js = nc.jetstream()
        events = int((await js.stream_info(names.stream)).state.messages)
        runner = await js.consumer_info(names.stream, names.runner_consumer)
    finally:
        await eventstore.close(nc)
    if events != published or runner.delivered.stream_seq or not runner.paused:
        raise RuntimeError(
            f"{when}: the stream holds {events:,} events, {published:,} published; the runner "
            f"took requests up to stream sequence {runner.delivered.stream_seq}; its consumer "
            f"{'is' if runner.paused else 'is not'} paused"
        )
    return events


async def _runner_paused(js: Any, names: Any) -> None:
    """Pause the runners' request consumer (JetStream's consumer pause, nats-server 2.11) for
    the harness's run. The history's job types are no bench job type: a runner given one of
    its requests fails that job at once (``UNKNOWN_JOB_TYPE``), in real time, and whichever of
    that ending and the history's own is stored first is kept (they share the job's terminal
    event id), so the stream, and the count, differed from run to run. Paused, no runner takes
    a request, the system otherwise runs as users run it, and the harness's other callers'
    systems (``./scripts/bench``) are untouched."""
    from datetime import UTC, datetime, timedelta

    from nats.js.errors import NotFoundError

    # The runner makes its consumer as it starts, which may end after the API answers; waited
    # for as long as `jobrunner up` waits for its services (RUNNER_START_SECONDS).
    deadline = time.monotonic() + RUNNER_START_SECONDS
    while True:
        try:
            await js.consumer_info(names.stream, names.runner_consumer)
            break
        except NotFoundError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the runner made no request consumer within {RUNNER_START_SECONDS} s"
                ) from None
            await asyncio.sleep(0.2)
    until = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pause = await js.pause_consumer(names.stream, names.runner_consumer, until)
    if not pause.paused:
        raise RuntimeError(f"the runners' request consumer is not paused: {pause}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_cost", description=__doc__)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="history size")
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="a source tree to measure (repeatable; default: this one)",
    )
    parser.add_argument("--no-callgrind", action="store_true", help="CPU seconds only")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="also record each tree's plain run with py-spy, folded stacks to <this>.<n>",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument(
        "--dumps",
        type=Path,
        help="keep each counted run's callgrind dump here, for callgrind_annotate: "
        "<dir>/callgrind.<k>.<tree's directory name>, k the tree's place among --tree (from 1)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    if args.no_callgrind and args.dumps is not None:
        parser.error(
            "--dumps keeps callgrind's dumps: it needs the counted runs (no --no-callgrind)"
        )
    if not args.no_callgrind and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind), or use --no-callgrind")
    from bench.system import RunningSystem

    trees = [tree.resolve() for tree in args.tree or [ROOT]]
    system = RunningSystem()
    results: dict[str, Any] = {"events_asked": args.events, "runs": []}
    try:
        system.start()
        events = asyncio.run(_publish_and_settle(system, max(args.events // 10, 1)))
        results["stream_events"] = events
        env = system.env | system.runtime_env()
        for place, tree in enumerate(trees, start=1):
            for counted in (False, True) if not args.no_callgrind else (False,):
                load = os.getloadavg()[0]
                dump = system.tmp / f"callgrind.{len(results['runs'])}" if counted else None
                profile = None
                if args.py_spy is not None and not counted:
                    profile = Path(f"{args.py_spy}.{len(results['runs'])}")
                figures = _run_child(tree, env, dump, profile)
                run = {"tree": str(tree), "callgrind": counted, "load": round(load, 2)} | figures
                run["loading_cpu_s_per_million"] = round(figures["loading_cpu_s"] / events * 1e6, 2)
                if counted:
                    run["instructions_per_event"] = round(figures["loading_instructions"] / events)
                    if args.dumps is not None:
                        args.dumps.mkdir(parents=True, exist_ok=True)
                        kept = args.dumps / f"callgrind.{place}.{tree.name}"
                        shutil.copyfile(f"{dump}.1", kept)
                        run["dump"] = str(kept)
                results["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
        # Nothing may have reached the stream or the runner while the trees were counted.
        asyncio.run(_history_unchanged(system, events, "after the replays"))
    finally:
        system.stop()
    for run in results["runs"]:
        if run["callgrind"]:
            print(
                f"{run['tree']}: loading {run['instructions_per_event']:,} instructions per event "
                f"({run['loading_instructions']:,} for {events:,} events)"
            )
        else:
            print(
                f"{run['tree']}: loading {run['loading_cpu_s_per_million']} CPU-s per million "
                f"events (load {run['load']}; phases {run['phases']})"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv and sys.path and Path(sys.path[0]).name == "bench":
        del sys.path[0]  # run by path: the tree's modules, not bench's, by their plain names
    sys.exit(main())
