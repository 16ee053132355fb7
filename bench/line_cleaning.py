"""The runner's line cleaning, counted in instructions: ``python -m bench.line_cleaning``.

What the runner does with a flood's pipe reads before anything is published: ``LineSplitter``
(splitting, decoding, escape and control cleaning) over ``--lines`` lines of 80 bytes (newline
included, as ``bench.tools.flood`` prints them; rounded to whole rounds of 8,192 lines, ten reads,
fed again and again), in the runner's 64 KiB reads. Five kinds
of line: ``plain`` (ASCII), ``german`` (umlauts: UTF-8 that is not ASCII), ``degree`` (a ``°``,
U+00B0, in each line: the byte 0xC2 that a C1 control begins with, the C1 check's near miss),
``colour`` (a green ``INFO`` in SGR codes, which the runner keeps), and ``colour_degree`` (both:
each line cleaned alone, each with a near miss).

Each kind runs in a child process of its own per ``--tree`` (``PYTHONPATH=<tree>``, so two trees'
``output.py`` can be compared): once plainly for CPU seconds (which move with the shared host's
load), once under ``valgrind --tool=callgrind`` for instructions (which do not), the feeding
alone marked for the count (``bench.callgrind_count``). Every child checks that it got the lines
it fed.

Compare two trees: ``git archive main | tar -x -C /tmp/base``, then
``python -m bench.line_cleaning --tree /tmp/base --tree .``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

READ_BYTES = 64 * 1024  # the runner's TURN_BYTES
LINE_BYTES = 80
KINDS = ("plain", "german", "degree", "colour", "colour_degree")
UNIT_LINES = 8192  # ten reads exactly: 8192 x 80 bytes = 10 x 64 KiB
_PAD = "x" * LINE_BYTES


def _line(kind: str, number: int) -> bytes:
    """One line of ``kind``, exactly LINE_BYTES bytes with its newline."""
    if kind == "plain":
        text = f"INFO line {number:07d} {_PAD}"
    elif kind == "german":
        text = f"INFO Prüfe Eintrag {number:07d}, Größe über {_PAD}"
    elif kind == "degree":
        text = f"INFO line {number:07d} at 21.5°C {_PAD}"
    elif kind == "colour":
        text = f"\x1b[32mINFO\x1b[0m line {number:07d} {_PAD}"
    else:
        text = f"\x1b[32mINFO\x1b[0m line {number:07d} at 21.5°C {_PAD}"
    data = text.encode()[: LINE_BYTES - 1]
    return data.decode("utf-8", "ignore").encode() + b"\n"


def _child(kind: str, lines: int, out: str) -> None:
    """Run in the tree under test: feed the lines, the feeding marked for callgrind."""
    from jobrunner.services.runner.output import LineSplitter

    # Ten reads' worth of lines, fed again and again: building a million lines in Python would
    # take longer under callgrind than feeding them.
    data = b"".join(_line(kind, i) for i in range(UNIT_LINES))
    reads = [data[i : i + READ_BYTES] for i in range(0, len(data), READ_BYTES)]
    splitter = LineSplitter(64 * 1024)
    got = 0
    os.sched_yield()  # callgrind: --zero-before=sched_yield
    cpu0 = time.process_time()
    for _ in range(lines // UNIT_LINES):
        for read in reads:
            got += len(splitter.feed(read))
    got += len(splitter.close())
    cpu = time.process_time() - cpu0
    os.getpgrp()  # callgrind: --dump-before=getpgrp
    if got != lines:
        raise SystemExit(f"fed {lines} lines, got {got}")
    Path(out).write_text(json.dumps({"cpu_seconds": cpu}))


def _run_child(tree: Path, kind: str, lines: int, counted: bool) -> dict[str, Any]:
    # Here, not at the top: the child runs this file from the tree under test, whose bench may
    # not have the helper.
    from bench.callgrind_count import COUNTED_ENV, counted_argv, dumped_instructions

    with tempfile.TemporaryDirectory(prefix="line-cleaning-") as scratch:
        out = Path(scratch) / "out.json"
        dump = Path(scratch) / "callgrind.out"
        # By its path, not ``-m``: the tree's ``jobrunner`` is imported, whatever its bench holds.
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(out)]
        argv += ["--lines", str(lines)]
        env = os.environ | {"PYTHONPATH": str(tree)}
        if counted:
            argv = counted_argv(argv, dump)
            env |= COUNTED_ENV
        result = subprocess.run(argv, env=env, cwd=tree, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{kind} in {tree} failed: {result.stderr.decode()[-3000:]}")
        figures: dict[str, Any] = json.loads(out.read_text())
        if counted:
            figures["instructions"] = dumped_instructions(dump)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a source tree (default: .)")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--no-count", action="store_true", help="CPU seconds only, no callgrind")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.lines, args.child[1])
        return 0
    trees = [tree.resolve() for tree in args.tree or [Path(".")]]
    args.lines = max(1, round(args.lines / UNIT_LINES)) * UNIT_LINES
    print(f"{args.lines:,} lines of {LINE_BYTES} bytes in {READ_BYTES // 1024} KiB reads")
    print(f"{'tree':<30} {'kind':<7} {'CPU ns/line':>12} {'instructions/line':>18}")
    for kind in args.kinds.split(","):
        for tree in trees:
            cpu = _run_child(tree, kind, args.lines, counted=False)["cpu_seconds"]
            count = "-"
            if not args.no_count:
                instructions = _run_child(tree, kind, args.lines, counted=True)["instructions"]
                count = f"{instructions / args.lines:,.1f}"
            per_line = f"{cpu / args.lines * 1e9:,.0f}"
            print(f"{str(tree)[-30:]:<30} {kind:<7} {per_line:>12} {count:>18}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
