"""The event stream on one node and on a 3-node cluster with 3 replicas, in the same run.

    .venv/bin/python -m bench.cluster_stream [--lines 1000000]

What the capacity plan (docs/capacity.md) needs to know about the stream: how many log lines per
second it stores when every write must reach two of three nodes before it is acknowledged, next
to one node; and how long one small event takes from publish to a consumer in each. Starts a
single nats-server and three clustered ones (``tests/cluster.py``'s nodes) on loopback, and runs
the main bench's JetStream limit (``bench.limits.jetstream``: 1000-line messages, 16 in flight)
against each, then the same with one line per message (a job printing slowly: the runner sends
each line as soon as the previous message is acknowledged). Prints JSON and writes
``bench/results/cluster_stream.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import nats

from bench.limits import jetstream
from bench.report import machine
from bench.system import ROOT
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.cluster import NODE_NAMES, ClusterNode


async def until_jetstream_answers(urls: str, timeout: float = 60.0) -> None:
    """The nodes are up; JetStream answers once they have elected a meta leader."""
    nc = await nats.connect(urls.split(","))
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await nc.jetstream(timeout=1).account_info()
                    return
                except Exception:
                    await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def measure(root: Path, lines: int, small: int) -> dict[str, Any]:
    single = EmbeddedNats(root / "single")
    routes = [free_port() for _ in NODE_NAMES]
    nodes = [
        ClusterNode(name, root / "nodes", routes, port)
        for name, port in zip(NODE_NAMES, routes, strict=True)
    ]
    try:
        await asyncio.to_thread(single.start)
        one = await jetstream(None, lines, nats_url=single.url)
        one_small = await jetstream(None, small, batch=1, nats_url=single.url)
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes))
        urls = ",".join(n.url for n in nodes)
        await until_jetstream_answers(urls)
        three = await jetstream(None, lines, nats_url=urls, replicas=len(nodes))
        three_small = await jetstream(None, small, batch=1, nats_url=urls, replicas=len(nodes))
    finally:
        await asyncio.to_thread(single.stop)
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))
    return {
        "one_node": one,
        "three_nodes_r3": three,
        "one_node_one_line_messages": one_small,
        "three_nodes_r3_one_line_messages": three_small,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_stream", description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=50_000, help="one-line messages")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    with scratch_dir("jobrunner-bench-cluster-") as root:
        results.update(asyncio.run(measure(root, args.lines, args.small)))
    path = ROOT / "bench" / "results" / "cluster_stream.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
