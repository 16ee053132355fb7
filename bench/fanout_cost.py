"""The fan-out's cost per unit of work: ``python -m bench.fanout_cost``.

The 100 jobs x 10 clients row's p99 is the queue for the two cores, so it moves with whatever
else runs on the host; two trees are compared by the CPU each process spends per unit instead:
per line printed, per message the runners stored (a runner behind its tools batches more and
spends less a line), and, for the API, per hand-over of a feed and per client handed one (one
socket write each). Each run prints the load average at its start, as pairs must report it.

``--profile-after 20`` also records the API and the runner with py-spy (``--py-spy``, installed
apart from the project's environment: ``pip install --target /tmp/pyspy py-spy``) from that many
seconds into the row, for ``--profile-seconds``, and prints each one's largest frames (self and
inclusive). ``--noisy`` runs the noisy-neighbour scenario after the row.

Run it from the tree to measure (its services run from the tree the module is in)::

    PYTHONPATH=$PWD python -m bench.fanout_cost --json /tmp/run.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import noisy, scenarios
from bench.nativetools import python_sseclients
from bench.system import RunningSystem


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def per_unit(row: dict[str, Any]) -> dict[str, Any]:
    """CPU µs by process per line, per message, per hand-over and per client delivery."""
    lines = row["lines_per_client"] * row["jobs"]
    messages = row["in_jetstream"].get("messages") or round(
        lines / row["in_jetstream"]["lines_per_message"]
    )
    handed = row.get("api_hand_overs") or {}
    per_line = row["cpu_us_per_line"]
    out: dict[str, Any] = {
        "lines": lines,
        "messages": messages,
        "hand_overs": handed.get("hand_overs"),
        "client_deliveries": handed.get("client_deliveries"),
        "us_per_line": per_line,
        "us_per_message": {k: round(v * lines / messages, 1) for k, v in per_line.items()},
    }
    delivered = row["clients"] * row["lines_per_client"] - row["lines_lost"]
    if delivered > 0 and not handed.get("hand_overs"):
        # Lines reached the clients but the count did not move: a tree without the counters, or
        # /metrics not read. A figure a hand-over would divide by nothing (or by a stale count).
        out["hand_overs_unchanged"] = True
        return out
    for unit, counted in (("hand_over", "hand_overs"), ("client_delivery", "client_deliveries")):
        count = handed.get(counted)
        if count:
            out[f"api_us_per_{unit}"] = round(per_line["api"] * lines / count, 2)
    return out


async def profile(pids: dict[str, int], py_spy: str, after: float, seconds: int, out: Path) -> None:
    """py-spy of each process, ``after`` seconds from now, raw stacks into ``out``."""
    await asyncio.sleep(after)
    log(f"py-spy: {', '.join(pids)} for {seconds} s")
    procs = [
        await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            "--nonblocking",
            "-r",
            "100",
            "-d",
            str(seconds),
            "-f",
            "raw",
            "-o",
            str(out / f"{name}.txt"),
            "--pid",
            str(pid),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    await asyncio.gather(*(p.wait() for p in procs))


def top_frames(raw: Path, count: int = 12) -> dict[str, list[tuple[str, float]]]:
    """The largest frames of a py-spy raw profile, by share of the samples: self (the leaf)
    and inclusive (anywhere on the stack, once a sample)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            anywhere[frame] += int(n)
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "samples": [("all", float(total))],
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(count)],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in anywhere.most_common(count)],
    }


async def measure(args: argparse.Namespace, system: RunningSystem) -> dict[str, Any]:
    results: dict[str, Any] = {"load_at_start": os.getloadavg()[0]}
    async with httpx.AsyncClient(
        base_url=system.base_url, headers=system.headers, timeout=60
    ) as http:
        spying = None
        if args.profile_after is not None:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            pids = {name: p.pid for name, p in system.services().items() if name != "projector"}
            spying = asyncio.create_task(
                profile(
                    pids, args.py_spy, args.profile_after, args.profile_seconds, args.profile_dir
                )
            )
        log(
            f"fan-out: {args.jobs} jobs x {args.clients_per_job} clients "
            f"(load {results['load_at_start']:.2f})"
        )
        row = await scenarios.fan_out(
            system, http, args.jobs * args.clients_per_job, args.seconds, jobs=args.jobs
        )
        results["fanout"] = row
        results["cost"] = per_unit(row)
        if spying is not None:
            await spying
            results["profiles"] = {
                raw.stem: top_frames(raw) for raw in sorted(args.profile_dir.glob("*.txt"))
            }
        if args.noisy:
            results["noisy_load_at_start"] = os.getloadavg()[0]
            log(f"noisy neighbour (load {results['noisy_load_at_start']:.2f})")
            results["noisy"] = await noisy.noisy_neighbour(system, http, args.noisy_seconds)
    return results


def summary(results: dict[str, Any]) -> str:
    row, cost = results["fanout"], results["cost"]
    stored = row["in_jetstream"]
    lines = [
        f"load at start {results['load_at_start']:.2f}",
        f"p99 {row['p99_ms']} ms (median {row['median_ms']}); in JetStream p99 {stored['p99_ms']}"
        f" ms (median {stored['median_ms']}), {stored['lines_per_message']} lines a message",
        f"{row['clients_complete']}/{row['clients']} complete, {row['lines_lost']} lost, "
        f"{row['duplicates']} duplicated, {row['gaps']} gaps",
        f"lines {cost['lines']:,}, messages {cost['messages']:,}, hand-overs "
        f"{cost['hand_overs']}, client deliveries {cost['client_deliveries']}",
        "µs a line:    " + _by_process(cost["us_per_line"]),
        "µs a message: " + _by_process(cost["us_per_message"]),
    ]
    if cost.get("hand_overs_unchanged"):
        lines.append(
            "WARNING: no change in the API's hand-over counts while lines were delivered "
            "(a tree without jobrunner_sse_hand_overs_total?): no figure a hand-over"
        )
    else:
        lines.append(
            f"api µs a hand-over {cost.get('api_us_per_hand_over')}, "
            f"a client delivery {cost.get('api_us_per_client_delivery')}"
        )
    if "noisy" in results:
        beside = results["noisy"].get("beside_flood") or {}
        alone = results["noisy"].get("alone") or {}
        lines.append(
            f"noisy (load {results['noisy_load_at_start']:.2f}): beside the flood p99 "
            f"{beside.get('p99_ms')} ms (median {beside.get('median_ms')}), alone p99 "
            f"{alone.get('p99_ms')} ms"
        )
    for name, frames in results.get("profiles", {}).items():
        lines.append(
            f"py-spy {name}: {int(frames['samples'][0][1]) if frames.get('samples') else 0} samples"
        )
        for kind in ("self", "inclusive"):
            for frame, share in frames[kind]:
                lines.append(f"  {kind:9} {share:5.1f} %  {frame}")
    return "\n".join(lines)


def _by_process(figures: dict[str, float]) -> str:
    return " · ".join(f"{k} {v}" for k, v in sorted(figures.items(), key=lambda x: -x[1]))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--clients-per-job", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20, help="each tool prints this long")
    parser.add_argument("--profile-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--profile-seconds", type=int, default=12)
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/fanout_cost_profiles"))
    parser.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy")
    parser.add_argument("--noisy", action="store_true", help="the noisy neighbour after the row")
    parser.add_argument("--noisy-seconds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument(
        "--python-sse-clients",
        action="store_true",
        help="the viewers in Python (bench/tools/sseclients.py) even where the C ones compile",
    )
    args = parser.parse_args()
    system = RunningSystem(
        sse_clients=python_sseclients("--python-sse-clients") if args.python_sse_clients else None
    )
    note = f" ({system.sse_clients.note})" if system.sse_clients.note else ""
    log(f"SSE clients: {system.sse_clients.kind}{note}")
    log(f"starting jobrunner up in {system.tmp}")
    try:
        system.start()
        results = asyncio.run(measure(args, system))
    finally:
        system.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
