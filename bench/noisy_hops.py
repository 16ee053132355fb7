"""Where a quiet line's time goes beside a flood, hop by hop (row 8, the noisy neighbour).

``python -m bench.noisy_hops`` copies the committed tree (``git archive HEAD``) to a scratch
directory, adds timestamps to that copy only (``PROBES``: the product's code here is never
changed), runs ``python -m bench --only limits,noisy`` in it and prints, for the quiet job's
lines alone and beside the flood, each hop's step and where the step's time went in the process
that held it: its loop thread on a core (CPU), runnable but waiting for a core (run delay), or
asleep (waiting for I/O). Those two figures come from the thread's ``/proc/<pid>/schedstat``,
read at each hop (the kernel adds a wait to run delay when the wait ends).

The hops of a line (``INFO t=<monotonic>`` from ``bench_paced``): the runner's read of the pipe,
its publish call, nats-py's socket write, the bench's plain subscriber (stored in JetStream),
the runner's ack, the API's parse of the message (nats-py's ``_process_msg``), the job reader's
callback, the SSE write, the viewer (the C client's delays, in line order).

``--follower-apart`` serves the flood's follower from a second API process (the quiet job's
viewer keeps the first): what taking the flood's SSE work off the quiet viewer's loop gives.
Session 41 (bench/RESULTS.md) has the first figures and what they say.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from io import BytesIO
from itertools import pairwise
from pathlib import Path

from bench.system import ROOT

# The module the probed copy gets as ``jobrunner/hopprobe.py``: appends ``<stamp> <time>
# <extra> | <cpu ns> <run delay ns>`` per quiet line to ``<HOPPROBE_DIR>/<hop>.<pid>``.
HOPPROBE = """
import os, re, time

DIR = os.environ["HOPPROBE_DIR"]
STAMP = re.compile(rb"INFO t=(\\d+\\.\\d+) line (\\d+)")
_files = {}


def schedstat(pid="self"):
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            cpu, delay, _ = f.read().split()
    except OSError:
        return "0 0"
    return f"{cpu} {delay}"


def services():
    out = []
    for label in ("api", "runner"):
        try:
            out.append(schedstat(open(f"{DIR}/pid.{label}").read().strip()))
        except OSError:
            out.append("0 0")
    return " ".join(out)


def record(hop, data, extra=""):
    if b"INFO t=" not in data:
        return
    now = time.monotonic()
    if hop == "bench_stored":
        extra = services()
    f = _files.get(hop)
    if f is None:
        f = _files[hop] = open(f"{DIR}/{hop}.{os.getpid()}", "a", buffering=1)
    stats = schedstat()
    f.write("".join(
        f"{t.decode()}#{n.decode()} {now:.6f} {extra} | {stats}\\n" for t, n in STAMP.findall(data)
    ))


def install(label):
    if not os.path.exists(f"{DIR}/pid.{label}"):  # the first API's: the quiet viewer's
        with open(f"{DIR}/pid.{label}", "w") as f:
            f.write(str(os.getpid()))
    from nats.aio import client, transport

    writelines = transport.TcpTransport.writelines

    def probed_writelines(self, payload):
        total = sum(map(len, payload))
        for piece in payload:
            record(f"{label}_sockwrite", piece, str(total))
        return writelines(self, payload)

    transport.TcpTransport.writelines = probed_writelines
    process_msg = client.Client._process_msg

    async def probed_process_msg(self, sid, subject, reply, data, headers):
        record(f"{label}_parsed", data)
        return await process_msg(self, sid, subject, reply, data, headers)

    client.Client._process_msg = probed_process_msg
"""

# (file, anchor, what replaces it): each anchor must occur exactly once, so a change to the
# code probed stops the probe with the anchor to move rather than tracing the wrong place.
PROBES = [
    (
        "jobrunner/services/runner/process.py",
        "            data = os.read(self._fd, READ_CHUNK)\n",
        "            data = os.read(self._fd, READ_CHUNK)\n"
        "            from jobrunner import hopprobe\n"
        "            hopprobe.record('runner_piperead', data)\n",
    ),
    (
        "jobrunner/services/runner/publisher.py",
        "            future = await self._acks.publish_soon(\n"
        "                self._names.subject(event), codec.encode(event), event.event_id\n"
        "            )\n",
        "            from jobrunner import hopprobe\n"
        "            data = codec.encode(event)\n"
        "            hopprobe.record('runner_publish', data)\n"
        "            future = await self._acks.publish_soon(\n"
        "                self._names.subject(event), data, event.event_id\n"
        "            )\n"
        "            future.add_done_callback(lambda _: hopprobe.record('runner_ack', data))\n",
    ),
    (
        "jobrunner/services/runner/service.py",
        "async def run_runner(settings: Settings, stop: asyncio.Event) -> None:\n",
        "async def run_runner(settings: Settings, stop: asyncio.Event) -> None:\n"
        "    from jobrunner import hopprobe\n"
        "    hopprobe.install('runner')\n",
    ),
    (
        "jobrunner/common/subscription.py",
        "    async def _on_message(self, msg: Msg) -> None:\n",
        "    async def _on_message(self, msg: Msg) -> None:\n"
        "        from jobrunner import hopprobe\n"
        "        hopprobe.record('api_onmessage', msg.data)\n",
    ),
    (
        "jobrunner/services/api/directwrite.py",
        "        cycle.transport.write(chunk)\n        return True\n",
        "        cycle.transport.write(chunk)\n"
        "        from jobrunner import hopprobe\n"
        "        hopprobe.record('api_ssewrite', chunk)\n"
        "        return True\n",
    ),
    (
        "jobrunner/services/api/app.py",
        "def create_app(settings: Settings) -> Litestar:\n",
        "def create_app(settings: Settings) -> Litestar:\n"
        "    from jobrunner import hopprobe\n"
        "    hopprobe.install('api')\n",
    ),
    (
        "bench/noisy.py",
        "        stored.extend(now - float(t) for t in STAMP_RE.findall(msg.data))\n",
        "        stored.extend(now - float(t) for t in STAMP_RE.findall(msg.data))\n"
        "        from jobrunner import hopprobe\n"
        "        hopprobe.record('bench_stored', msg.data)\n",
    ),
    (
        "bench/noisy.py",
        "    return viewer, stored\n",
        "    import json, os\n"
        "    name = f'viewer.{time.monotonic():.3f}'\n"
        "    (Path(os.environ['HOPPROBE_DIR']) / name).write_text(json.dumps(viewer.delays))\n"
        "    return viewer, stored\n",
    ),
    ("bench/noisy.py", "import time\n", "import time\nfrom pathlib import Path\n"),
]

# The flood's follower on a second API process (``--follower-apart``).
FOLLOWER_APART = [
    (
        "bench/noisy.py",
        '    follower = SseClients(system.sse_clients, "127.0.0.1", system.port, system.headers)\n',
        "    import subprocess, sys, urllib.request\n"
        "    from jobrunner.embedded.serverprocess import free_port\n"
        "    port = free_port()\n"
        "    api = subprocess.Popen(\n"
        "        [sys.executable, '-m', 'jobrunner.cli', 'api', '--port', str(port)],\n"
        "        env=system.env | system.runtime_env(), stdin=subprocess.DEVNULL,\n"
        "        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,\n"
        "    )\n"
        "    for _ in range(600):\n"
        "        try:\n"
        "            urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=1)\n"
        "            break\n"
        "        except OSError:\n"
        "            time.sleep(0.1)\n"
        '    follower = SseClients(system.sse_clients, "127.0.0.1", port, system.headers)\n',
    ),
    (
        "bench/noisy.py",
        '    flood_lines = (await http.get(f"/api/jobs/{flood}")).json().get("log_count")\n',
        "    api.terminate()\n"
        "    api.wait()\n"
        '    flood_lines = (await http.get(f"/api/jobs/{flood}")).json().get("log_count")\n',
    ),
]

HOPS = [
    "runner_piperead",
    "runner_publish",
    "runner_sockwrite",
    "bench_stored",
    "runner_ack",
    "api_parsed",
    "api_onmessage",
    "api_ssewrite",
    "viewer",
]
# Each step, the hop it starts from, and whose loop thread holds it.
STEPS = [
    ("runner_piperead", "runner_publish", "runner"),
    ("runner_publish", "runner_sockwrite", "runner"),
    ("runner_sockwrite", "bench_stored", "nats"),
    ("bench_stored", "runner_ack", "runner"),
    ("bench_stored", "api_parsed", "api"),
    ("api_parsed", "api_onmessage", "api"),
    ("api_onmessage", "api_ssewrite", "api"),
    ("api_ssewrite", "viewer", "viewer"),
]


def probed_tree(into: Path, apart: bool) -> Path:
    """The committed tree, with ``PROBES`` (and ``FOLLOWER_APART``) applied, in ``into``."""
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "jobrunner" / "hopprobe.py").write_text(HOPPROBE)
    for name, anchor, replacement in PROBES + (FOLLOWER_APART if apart else []):
        path = into / name
        text = path.read_text()
        if text.count(anchor) != 1:
            raise SystemExit(f"{name}: the probe's anchor is not there once: {anchor!r}")
        path.write_text(text.replace(anchor, replacement))
    return into


class Trace:
    """One run's records: each quiet line's time and its thread's schedstat at each hop."""

    def __init__(self, directory: Path) -> None:
        # stamp -> hop -> (time, (cpu ns, run delay ns) of the thread, the extra fields)
        self.at: dict[str, dict[str, tuple[float, tuple[int, int], list[str]]]] = defaultdict(dict)
        for path in directory.glob("*_*.*"):
            hop = path.name.rsplit(".", 1)[0]
            for line in path.read_text().splitlines():
                left, right = line.split("|")
                fields = left.split()
                cpu, delay = map(int, right.split())
                self.at[fields[0]].setdefault(hop, (float(fields[1]), (cpu, delay), fields[2:]))
        # Each line as "<stamp>#<line number>" (two lines printed in one microsecond after a
        # stall share a stamp), in the order printed.
        keys = sorted(self.at, key=printed)
        # The quiet job alone, then beside the flood: split at the longest pause between lines.
        gaps = [printed(b) - printed(a) for a, b in pairwise(keys)]
        cut = gaps.index(max(gaps)) + 1
        self.runs = {"alone": keys[:cut], "beside": keys[cut:]}
        viewers = sorted(directory.glob("viewer.*"), key=lambda p: float(p.name[7:]))
        for run, path in zip(self.runs.values(), viewers, strict=True):
            delays = json.loads(path.read_text())  # the viewer's, line 1 first
            for key in run:
                number = int(key.split("#")[1])
                if number <= len(delays):
                    self.at[key]["viewer"] = (printed(key) + delays[number - 1], (0, 0), [])

    def stats(self, stamp: str, hop: str, who: str) -> tuple[int, int] | None:
        """``who``'s loop thread's schedstat at ``hop`` (the bench reads the services' at its
        own hop: it is stale by a wait under way then, so a step from there over-counts run
        delay by the part of that wait before the line was stored)."""
        _, own, extra = self.at[stamp][hop]
        if hop == "bench_stored":
            api_cpu, api_delay, runner_cpu, runner_delay = map(int, extra[:4])
            return {"api": (api_cpu, api_delay), "runner": (runner_cpu, runner_delay)}.get(who)
        return own if hop.startswith(who) else None


def printed(key: str) -> float:
    """When the line ``key`` ("<stamp>#<line number>") was printed (time.monotonic)."""
    return float(key.split("#")[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(trace: Trace) -> str:
    lines = []
    for name, run in trace.runs.items():
        lines += [
            f"\n{name} ({len(run)} lines)",
            "| step | held by | p50 / p90 / p99 ms | since printed p99 | slowest 10 %: "
            "CPU / run delay / asleep |",
            "|---|---|---|---|---|",
        ]
        for start, end, who in STEPS:
            steps, since, tail = [], [], []
            for stamp in run:
                at = trace.at[stamp]
                if end not in at:
                    continue
                since.append((at[end][0] - printed(stamp)) * 1e3)
                if start in at:
                    step = (at[end][0] - at[start][0]) * 1e3
                    steps.append(step)
                    before, after = trace.stats(stamp, start, who), trace.stats(stamp, end, who)
                    if before and after:
                        cpu, delay = ((b - a) / 1e6 for a, b in zip(before, after, strict=True))
                        tail.append((step, cpu, delay))
            p90 = percentile(steps, 0.9)
            slow = [t for t in tail if t[0] >= p90]
            split = "—"
            total = sum(t[0] for t in slow)
            if total > 0:
                cpu = sum(t[1] for t in slow) / total * 100
                delay = sum(t[2] for t in slow) / total * 100
                split = f"{cpu:.0f} % / {delay:.0f} % / {100 - cpu - delay:.0f} %"
            figures = "/".join(f"{percentile(steps, q):.2f}" for q in (0.5, 0.9, 0.99))
            lines.append(
                f"| {start.split('_', 1)[1]} → {end.split('_', 1)[-1]} | {who} | {figures} | "
                f"{percentile(since, 0.99):.2f} | {split} |"
            )
        lines.append(share(trace, run))
    return "\n".join(lines)


def share(trace: Trace, run: list[str]) -> str:
    """The runner's and the API's loop threads over the run: on a core, and waiting for one."""
    parts = []
    for who, hop in (("runner", "runner_piperead"), ("api", "api_parsed")):
        seen = [trace.at[s][hop] for s in run if hop in trace.at[s]]
        if len(seen) < 2:
            continue
        (t0, (c0, d0), _), (t1, (c1, d1), _) = min(seen), max(seen)
        wall = (t1 - t0) * 1e9
        parts.append(
            f"{who}: CPU {100 * (c1 - c0) / wall:.0f} %, run delay {100 * (d1 - d0) / wall:.0f} %"
        )
    return "loop threads over the run: " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noisy_hops", description=__doc__)
    parser.add_argument("--follower-apart", action="store_true")
    parser.add_argument("--keep", type=Path, help="a directory for the probed tree and traces")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="noisy-hops-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = probed_tree(work / "tree", args.follower_apart)
    traces = work / "trace"
    traces.mkdir()
    env = os.environ | {"PYTHONPATH": str(tree), "HOPPROBE_DIR": str(traces)}
    subprocess.run(
        [sys.executable, "-m", "bench", "--only", "limits,noisy"], cwd=tree, env=env, check=True
    )
    print(report(Trace(traces)))
    print(f"\nload at the end: {os.getloadavg()[0]:.2f}; trace in {traces}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
