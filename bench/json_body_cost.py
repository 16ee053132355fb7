"""What reading a JSON body costs, counted in instructions: ``python -m bench.json_body_cost``.

Session 40 refuses a key given twice in one object (``jsonscan``): every body msgspec accepted
is scanned once more by Python's json scanner. This harness counts, under callgrind
(``callgrind_count``), the instructions of reading one external job's report of 1,000 lines
(``reports.decode_report``, what ``POST /api/jobs/{id}/report`` does with its body before
anything is published) and of a 1,000-job batch body (``jsonbody.decode_any``), each ``--repeat``
times, for each ``--tree`` (``PYTHONPATH=<tree>``). Compare with a tree of main:
``git worktree add --detach /tmp/base main``, then
``python -m bench.json_body_cost --tree /tmp/base --tree .``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.callgrind_count import COUNTED_ENV, counted_argv, dumped_instructions

ROOT = Path(__file__).resolve().parent.parent


def report_body(lines: int) -> bytes:
    """A worker's report: progress, a message and ``lines`` log lines of ordinary length."""
    return json.dumps(
        {
            "report_id": "r-1",
            "progress": {"percent": 42.5, "current": 425, "total": 1000, "phase": "scraping"},
            "message": "page 425 of 1000",
            "lines": [
                {"text": f"GET https://example.com/page/{i} 200 in {i % 97} ms", "level": "INFO"}
                for i in range(lines)
            ],
        }
    ).encode()


def batch_body(jobs: int) -> bytes:
    return json.dumps(
        {
            "batch_name": "nightly",
            "jobs": [
                {"job_type": "scraper", "parameters": {"url": f"https://example.com/{i}"}}
                for i in range(jobs)
            ],
        }
    ).encode()


_CHILD = """
import os, sys
from jobrunner.services.api import jsonbody, reports
body = open(sys.argv[1], "rb").read()
kind, repeat = sys.argv[2], int(sys.argv[3])
read = reports.decode_report if kind == "report" else jsonbody.decode_any
read(body)  # imports and first-call caches outside the count
os.sched_yield()
for _ in range(repeat):
    read(body)
os.getpgrp()
"""


def count(tree: Path, body: Path, kind: str, repeat: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        dump = Path(scratch) / "callgrind.out"
        argv = counted_argv([sys.executable, "-c", _CHILD, str(body), kind, str(repeat)], dump)
        env = {**os.environ, **COUNTED_ENV, "PYTHONPATH": str(tree)}
        # From the tree: ``-c`` puts the working directory first on the path.
        subprocess.run(argv, env=env, cwd=tree, check=True, capture_output=True)
        return dumped_instructions(dump)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, default=[])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    with tempfile.TemporaryDirectory() as scratch:
        bodies = {
            "report": (Path(scratch) / "report.json", report_body(1000)),
            "batch": (Path(scratch) / "batch.json", batch_body(1000)),
        }
        for path, data in bodies.values():
            path.write_bytes(data)
        for kind, (path, data) in bodies.items():
            for tree in trees:
                total = count(tree.resolve(), path, kind, args.repeat)
                print(
                    f"{kind} ({len(data):,} bytes) {tree}: {total // args.repeat:,} "
                    "instructions a body"
                )


if __name__ == "__main__":
    main()
