"""``python -m bench``: start jobrunner, measure, print the table, write bench/results/latest.json.

``--quick`` runs the measurements smaller (``QUICK``), a smoke test of
the suite itself; ``--only latency,dispatch`` runs a subset.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from bench import catchup, limits, noisy, report, scenarios, settle
from bench.nativetools import python_sseclients
from bench.system import ROOT, RunningSystem

ALL = (
    "limits",
    "latency",
    "dispatch",
    "replay",
    "reads",
    "catchup",
    "throughput",
    "fanout",
    "noisy",
)

FULL = {
    "latency_seconds": 30,
    "dispatch_jobs": 50,
    "throughput_lines": 1_000_000,
    "fanout_clients": 1000,
    "fanout_seconds": 20,
    "fanout_many_jobs": 100,
    "fanout_many_clients": 10,
    "replay_jobs": 100_000,
    "reads_seconds": 5.0,
    "noisy_seconds": 10,
}
QUICK = {
    "latency_seconds": 5,
    "dispatch_jobs": 10,
    "throughput_lines": 100_000,
    "fanout_clients": 100,
    "fanout_seconds": 5,
    "fanout_many_jobs": 10,
    "fanout_many_clients": 10,
    "replay_jobs": 10_000,
    "reads_seconds": 2.0,
    "noisy_seconds": 3,
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def measure(system: RunningSystem, only: set[str], size: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    settled: list[dict[str, Any]] = []

    async def settle_before(scenario: str, force: bool = False) -> None:
        # After the history, leftovers of it (the runner's and notifier's backlog, autovacuum)
        # would share the cores with the scenario: it starts once they are done (bench/settle.py).
        if force or "live_projection" in results:
            settled.append(await settle.settle(system, scenario))
            results["settled"] = settled

    async with httpx.AsyncClient(
        base_url=system.base_url, headers=system.headers, timeout=60
    ) as http:
        if "limits" in only:
            log("limits: pipe, spawn, JetStream, COPY")
            results["limits"] = {
                "pipe_read": await limits.pipe_read(size["throughput_lines"]),
                "pipe_latency": await limits.pipe_latency(system.paced),
                "spawn_first_line": await limits.spawn_first_line(),
                "jetstream": await limits.jetstream(system, size["throughput_lines"]),
                "copy": await limits.copy_rows(system, size["throughput_lines"]),
            }
        if "latency" in only:
            log(f"line latency: 100 lines/s for {size['latency_seconds']} s")
            results["latency"] = await scenarios.line_latency(system, http, size["latency_seconds"])
        if "dispatch" in only:
            log(f"dispatch: {size['dispatch_jobs']} jobs")
            results["dispatch"] = await scenarios.dispatch(system, http, size["dispatch_jobs"])
        if "replay" in only or "reads" in only or "catchup" in only:
            log(f"history: {size['replay_jobs'] * 10:,} events, projected, then replayed")
            results.update(
                await scenarios.history_and_replay(
                    system, size["replay_jobs"], lambda: settle_before("the replay", force=True)
                )
            )
            if "reads" in only:
                await settle_before("reads")
                log("reads")
                results["reads"] = await scenarios.reads(
                    system, size["reads_seconds"], size["replay_jobs"]
                )
                database_url = system.runtime["database_url"]
                lim = results.setdefault("limits", {})
                lim["direct_list_query"] = await limits.direct_query(
                    database_url, size["reads_seconds"]
                )
                before = scenarios.cpu_now(system)
                lim["direct_list_walk"] = await limits.direct_walk(
                    database_url, size["reads_seconds"]
                )
                lim["direct_list_walk"]["cpu_us_per_request"] = scenarios.cpu_us_per_request(
                    before, scenarios.cpu_now(system), lim["direct_list_walk"]["n"]
                )
            if "catchup" in only:
                await settle_before("catch-up")
                log("catch-up: /api/jobs/stream from the stream's start")
                results["catchup"] = {"updates": await catchup.updates_from_start(system)}
                results.setdefault("limits", {})["raw_stream_read"] = await catchup.raw_read(system)
    async with httpx.AsyncClient(
        base_url=system.base_url, headers=system.headers, timeout=60
    ) as http:
        if "throughput" in only:
            await settle_before("throughput")
            log(f"throughput: {size['throughput_lines']:,} lines")
            results["throughput"] = await scenarios.throughput(
                system, http, size["throughput_lines"]
            )
            if "catchup" in only:
                log("catch-up: the flood job's stream from its start")
                results.setdefault("catchup", {})["job"] = await catchup.job_from_start(
                    system, results["throughput"]["job_id"], size["throughput_lines"]
                )
        if "fanout" in only:
            await settle_before("fan-out")
            log(f"fan-out: {size['fanout_clients']} clients, 200 lines/s")
            results["fanout"] = await scenarios.fan_out(
                system, http, size["fanout_clients"], size["fanout_seconds"]
            )
            jobs, per_job = size["fanout_many_jobs"], size["fanout_many_clients"]
            log(f"fan-out: {jobs} jobs x {per_job} clients, 200 lines/s each")
            results["fanout_many"] = await scenarios.fan_out(
                system, http, jobs * per_job, size["fanout_seconds"], jobs=jobs
            )
        if "noisy" in only:
            await settle_before("noisy neighbour")
            log(f"noisy neighbour: 100 lines/s for {size['noisy_seconds']} s, alone and by a flood")
            results["noisy"] = await noisy.noisy_neighbour(system, http, size["noisy_seconds"])
    return results


def _flood_status(noisy: dict) -> str:
    """What the read models showed of the flood job when the quiet job ended."""
    if noisy["flood_running_throughout"]:
        return "ran throughout"
    status = noisy.get("flood_status", "unknown")
    if status is None:
        # The projector, behind the flood's lines, had not stored the job yet: not an end.
        return "not in the read models yet when the quiet job ended"
    return f"{status} (not running) when the quiet job ended"


def _flood_viewer(viewer: dict | None) -> str:
    """The flood's own viewer: it must follow to the end (a cut one resumes, and is counted)."""
    if viewer is None:
        return ""
    cpu = f", {viewer['cpu_s']} CPU-s in {viewer['clients']}" if "cpu_s" in viewer else ""
    return (
        f"; its viewer got {viewer['lines']:,} lines{cpu}, cut and resumed {viewer['resumes']} "
        f"times, ended {viewer['ended']}"
    )


def _p99_median(figures: dict[str, Any] | None, what: str) -> str:
    if not figures or figures.get("p99_ms") is None:
        return f"{what}: not measured"
    return f"{what}: {figures['p99_ms']} ms (median {figures['median_ms']} ms)"


def fan_out_resumes(f: dict[str, Any]) -> str:
    """Clients that resumed (as a browser does) after the API ended their stream early, and why."""
    resumed = f.get("clients_resumed", 0)
    if not resumed:
        return ""
    why = ", ".join(f"{n} {reason}" for reason, n in f.get("streams_cut_by_api", {}).items())
    return f"; {resumed} resumed ({why or 'connection lost'})"


def cpu_row(cpu: dict[str, int] | None) -> str:
    """``api 512 µs · postgres 301 µs · bench 120 µs`` (the bench: its client's own CPU)."""
    if not cpu:
        return "not measured"
    return " · ".join(f"{part} {us} µs" for part, us in sorted(cpu.items(), key=lambda x: -x[1]))


def in_jetstream(f: dict[str, Any]) -> str:
    """When the same lines were in JetStream: the runner's share of the delay."""
    stored = f.get("in_jetstream") or {}
    if stored.get("p99_ms") is None:
        return ""
    batched = stored.get("lines_per_message")
    also = f", {batched} lines a message" if batched is not None else ""
    return f"; in JetStream p99 {stored['p99_ms']} ms (median {stored['median_ms']} ms{also})"


def tools_named(results: dict[str, Any]) -> str:
    """`` (tools: the paced tool in C; sse_clients: the viewers' process, C)``: which tools
    the CPU row's "tools" and "sse_clients" parts are."""
    named = []
    if tool := results.get("paced_tool", {}).get("kind"):
        named.append(f"tools: the paced tool in {tool}")
    if clients := results.get("sse_clients", {}).get("kind"):
        named.append(f"sse_clients: the viewers' process, {clients}")
    return f" ({'; '.join(named)})" if named else ""


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per figure, with its target and the limit it is compared to."""
    lim = results.get("limits", {})
    ratio = report.ratio
    out: list[dict[str, Any]] = []
    floor = None
    if "pipe_latency" in lim and "jetstream" in lim:
        floor = lim["pipe_latency"]["median_ms"] + lim["jetstream"]["delivery_latency"]["median_ms"]
    if lat := results.get("latency"):
        out += [
            {
                "name": "1. line latency, median",
                "result": f"{lat['median_ms']} ms",
                "target": "≤ 10 ms",
                "met": lat["median_ms"] <= 10,
                "limit": f"{floor:.2f} ms (pipe + JetStream hop)" if floor else "—",
                "ratio": ratio(lat["median_ms"], floor, higher_is_better=False),
            },
            {
                "name": "1. line latency, p99",
                "result": f"{lat['p99_ms']} ms",
                "target": "≤ 50 ms",
                "met": lat["p99_ms"] <= 50,
            },
            {"name": "1. line latency, max", "result": f"{lat['max_ms']} ms"},
        ]
    if d := results.get("dispatch"):
        spawn = lim.get("spawn_first_line", {}).get("median_ms")
        out += [
            {
                "name": "2. dispatch, median",
                "result": f"{d['median_ms']} ms",
                "target": "≤ 10 ms",
                "met": d["median_ms"] <= 10,
                "limit": f"{spawn} ms (spawn echo, read its line)" if spawn else "—",
                "ratio": ratio(d["median_ms"], spawn, higher_is_better=False),
            },
            {"name": "2. dispatch, p99", "result": f"{d['p99_ms']} ms"},
        ]
        if parts := d.get("since_post_started"):
            # Where the time goes: medians of each step, from the POST's start (events' own
            # timestamps for the runner's steps).
            out.append(
                {
                    "name": "2. dispatch, steps (median, since the POST started)",
                    "result": " · ".join(
                        f"{label} {parts[step]['median_ms']} ms"
                        for step, label in scenarios.DISPATCH_STEPS.items()
                        if step in parts
                    ),
                }
            )
        if cpu := d.get("cpu_ms_per_job"):
            out.append(
                {
                    "name": "2. dispatch, CPU per job (ms)",
                    "result": " · ".join(f"{part} {used}" for part, used in cpu.items()),
                }
            )
    if t := results.get("throughput"):
        rate = t["lines_per_s"]
        pipe = lim.get("pipe_read", {}).get("lines_per_s")
        jsl = lim.get("jetstream", {}).get("publish", {}).get("lines_per_s")
        copy = lim.get("copy", {}).get("rows_per_s")
        for key, name, limit, what in (
            ("jetstream", "3a. throughput, stored in JetStream", jsl, "JetStream batch publish"),
            ("postgres", "3b. throughput, projected into Postgres", copy, "COPY"),
            ("sse", "3c. throughput, received over SSE", pipe, "pipe read"),
        ):
            value = rate.get(key)
            row = {
                "name": name,
                "result": f"{value:,} lines/s" if value else "—",
                "limit": f"{limit:,} lines/s ({what})" if limit else "—",
                "ratio": ratio(value, limit),
            }
            if key == "sse":
                # Fast is met only with every line there, once, in order, up to ``done``: a
                # stream that lost lines ends sooner (before session 40 it was ✅ with 277,071
                # lines missing, lost by the API's reader under load).
                whole = scenarios.every_line_once(t)
                row |= {
                    "target": "≥ 100,000 lines/s",
                    "met": bool(value and value >= 100_000 and whole),
                }
            out.append(row)
        out.append(
            {
                "name": "3c. throughput, lines at the SSE client",
                "result": scenarios.stream_verdict(t),
                "target": "every line once, in order",
                "met": scenarios.every_line_once(t),
            }
        )
        if cpu := t.get("cpu_us_per_line"):
            out.append(
                {
                    "name": "3. CPU per line, by process",
                    "result": " · ".join(
                        f"{part} {us} µs" for part, us in sorted(cpu.items(), key=lambda x: -x[1])
                    ),
                }
            )
        mem = t["peak_rss_mib"]
        start, end = t["runner_rss_mib_start_end"]
        out.append(
            {
                "name": "3. peak memory (runner / projector / api)",
                "result": " / ".join(f"{mem.get(n, 0)} MiB" for n in ("runner", "projector", "api"))
                + f"; runner {start} → {end} MiB",
                "target": "runner flat",
            }
        )
    for key in ("fanout", "fanout_many"):
        f = results.get(key)
        if not f:
            continue
        what = (
            f"{f['clients']} clients"
            if f.get("jobs", 1) == 1
            else f"{f['jobs']} jobs x {f['clients'] // f['jobs']} clients"
        )
        out += [
            {
                "name": f"4. fan-out, {what} x 200 lines/s, p99",
                "result": f"{f['p99_ms']} ms (median {f['median_ms']} ms)" + in_jetstream(f),
                "target": "≤ 250 ms",
                "met": f["p99_ms"] is not None and f["p99_ms"] <= 250,
            },
            {
                "name": "4. fan-out, lines lost / clients complete",
                "result": f"{f['lines_lost']} lost, {f['duplicates']} duplicated; "
                f"{f['clients_complete']}/{f['clients']} complete" + fan_out_resumes(f),
                "target": "none lost",
                "met": f["lines_lost"] == 0 and f["duplicates"] == 0,
            },
            {
                "name": "4. fan-out, API peak memory",
                "result": f"{f['api_peak_rss_mib']} MiB",
                "target": "≤ 300 MB",
                "met": f["api_peak_rss_mib"] * 2**20 <= 300e6,
            },
        ]
        if cpu := f.get("cpu_us_per_line"):
            out.append(
                {
                    "name": f"4. fan-out, {what}: CPU over the run per line printed, by process"
                    + tools_named(results),
                    "result": " · ".join(
                        f"{part} {us} µs" for part, us in sorted(cpu.items(), key=lambda x: -x[1])
                    ),
                }
            )
        if printing := f.get("cpu_us_per_line_printing"):
            out.append(
                {
                    "name": f"4. fan-out, {what}: CPU while printing (clients connected) per line",
                    "result": " · ".join(
                        f"{part} {us} µs"
                        for part, us in sorted(printing.items(), key=lambda x: -x[1])
                    ),
                }
            )
    if n := results.get("noisy"):
        alone, beside = n["alone"], n["beside_flood"]
        out += [
            {
                "name": "8. noisy neighbour: 100 lines/s beside a flood, p99",
                "result": f"{beside['p99_ms']} ms (median {beside['median_ms']} ms)",
                "target": "≤ 25 ms",
                "met": beside["p99_ms"] is not None
                and beside["p99_ms"] <= 25
                and n["flood_running_throughout"]
                and n.get("flood_viewer", {}).get("ended", "done") == "done",
                "limit": f"{alone['p99_ms']} ms (p99 alone; median {alone['median_ms']} ms)",
                "ratio": ratio(beside["p99_ms"], alone["p99_ms"], higher_is_better=False),
            },
            {
                # Where the delay is: up to here the runner's and JetStream's, the rest the API's.
                "name": "8. noisy neighbour: the same lines stored in JetStream, p99",
                "result": _p99_median(n.get("beside_flood_stored"), "beside a flood")
                + " · "
                + _p99_median(n.get("alone_stored"), "alone"),
            },
            {
                "name": "8. noisy neighbour, lines lost / flood throughout",
                "result": f"{n['lines_expected'] - n['lines_received']} lost, "
                f"{n['duplicates']} duplicated; flood "
                + _flood_status(n)
                + f" ({n['flood_lines']:,} lines)"
                + _flood_viewer(n.get("flood_viewer")),
                "target": "none lost",
                "met": n["lines_received"] == n["lines_expected"] and n["duplicates"] == 0,
            },
        ]
    if cu := results.get("catchup"):
        raw = lim.get("raw_stream_read", {}).get("events_per_s")
        if up := cu.get("updates"):
            out.append(
                {
                    "name": f"4b. catch-up, /api/jobs/stream from {up['stream_events']:,} "
                    "events back",
                    "result": f"{up['stream_events_per_s']:,} events/s "
                    f"({up['job_updates_per_s']:,} job_update/s)",
                    "target": "≥ 100,000 events/s",
                    "met": up["stream_events_per_s"] >= 100_000,
                    "limit": f"{raw:,} events/s (raw stream read)" if raw else "—",
                    "ratio": ratio(up["stream_events_per_s"], raw),
                }
            )
        if job := cu.get("job"):
            out.append(
                {
                    "name": f"4b. catch-up, a job's stream from its start ({job['lines']:,} lines)",
                    "result": f"{job['lines_per_s']:,} lines/s; {job['gaps']} gaps, "
                    f"{job['duplicates']} duplicated",
                    "target": "≥ 100,000 events/s",
                    "met": job["lines_per_s"] >= 100_000 and not job["gaps"],
                }
            )
    if lp := results.get("live_projection"):
        copy = lim.get("copy", {}).get("rows_per_s")
        out.append(
            {
                "name": f"5. live projector catching up with {lp['events']:,} new events",
                "result": f"{lp['projected_events_per_s']:,} events/s "
                f"(published at {lp['publish_events_per_s']:,}/s)",
            }
        )
    if settled := results.get("settled"):
        first = settled[0]
        out.append(
            {
                "name": "5. the system settled after the history (before the next scenario)",
                "result": settle.describe(first).removeprefix("settled "),
            }
        )
    if r := results.get("replay"):
        copy = lim.get("copy", {}).get("rows_per_s")
        out.append(
            {
                "name": f"5. replay, {r['stream_events']:,} events (`jobrunner replay`)",
                "result": f"{r['events_per_s_total']:,} events/s start to end "
                f"({r['seconds_total']} s; {r.get('phases') or 'phases unknown'}; "
                f"{r['events_per_s_reported']:,} events/s while loading)",
                "target": "≥ 100,000 events/s",
                "met": r["events_per_s_total"] >= 100_000,
                "limit": f"{copy:,} rows/s (COPY)" if copy else "—",
                "ratio": ratio(r["events_per_s_total"], copy),
            }
        )
        if cpu := r.get("cpu_s_per_million_events"):
            out.append(
                {
                    "name": "5. replay, CPU seconds per million events, by process",
                    "result": " · ".join(
                        f"{part} {s}" for part, s in sorted(cpu.items(), key=lambda x: -x[1])
                    )
                    + f" (sum {sum(cpu.values()):.1f})",
                }
            )
    if rd := results.get("reads"):
        one = lim.get("direct_list_query", {}).get("requests_per_s", 0)
        walk = lim.get("direct_list_walk", {}).get("requests_per_s")
        j, lg = rd["list_jobs"], rd["logs"]
        out += [
            {
                "name": f"6. GET /api/jobs, filters + next page ({rd['jobs']:,} jobs)",
                "result": f"{j['requests_per_s']:,} req/s, p99 {j['p99_ms']} ms",
                "target": "≥ 50 % of the limit, p99 ≤ 10 ms",
                "met": bool(walk)
                and j["requests_per_s"] >= walk / 2
                and j["p99_ms"] is not None
                and j["p99_ms"] <= 10,
                "limit": f"{walk or 0:,} req/s (the same queries, asyncpg; "
                f"one status query alone: {one:,} req/s)",
                "ratio": ratio(j["requests_per_s"], walk),
            },
            {
                "name": "6. GET /api/jobs: CPU per request, by process (the limit's per query)",
                "result": f"{cpu_row(j.get('cpu_us_per_request'))}; the limit: "
                + cpu_row(lim.get("direct_list_walk", {}).get("cpu_us_per_request")),
            },
            {
                "name": "6. GET /api/jobs/{id}/logs, 500-line pages",
                "result": f"{lg['requests_per_s']:,} req/s, p99 {lg['p99_ms']} ms",
            },
        ]
    return out


def git_head() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (QUICK), a smoke test")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated of {ALL}")
    parser.add_argument(
        "--python-sse-clients",
        action="store_true",
        help="the viewers in Python (bench/tools/sseclients.py) even where the C ones compile",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    size = QUICK if args.quick else FULL
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_head(),
        "machine": report.machine(),
        "sizes": size,
    }
    system = RunningSystem(
        sse_clients=python_sseclients("--python-sse-clients") if args.python_sse_clients else None
    )
    # Which paced tool the line-printing scenarios ran (bench/nativetools.py): its CPU per line
    # is the "tools" part of the fan-out's CPU rows.
    results["paced_tool"] = {"kind": system.paced.kind, "note": system.paced.note}
    note = f" ({system.paced.note})" if system.paced.note else ""
    log(f"paced tool: {system.paced.kind}{note}")
    # Which SSE clients the fan-out, catch-up and noisy-neighbour viewers were (the same helper):
    # their process's CPU is the "sse_clients" part of the fan-out's CPU rows.
    results["sse_clients"] = {"kind": system.sse_clients.kind, "note": system.sse_clients.note}
    note = f" ({system.sse_clients.note})" if system.sse_clients.note else ""
    log(f"SSE clients: {system.sse_clients.kind}{note}")
    log(f"starting jobrunner up in {system.tmp}")
    try:
        system.start()
        results["authenticated"] = system.token is not None
        results.update(asyncio.run(measure(system, only, size)))
    finally:
        log("stopping jobrunner")
        system.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["table"] = rows(results)
    path = report.write_json(results)
    report.write_markdown(results)
    print(report.table(results["table"]))
    print(
        f"\n{results['machine']['nproc']} cores, {results['machine']['cpu']}, "
        f"{results['machine']['ram_gib']} GiB RAM; {results['seconds']} s; JSON: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
