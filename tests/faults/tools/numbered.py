"""A fault-suite tool: prints numbered lines at a pace and keeps its own record of what it did.

The record (``--record``) has one line per fact, each with the wall-clock time:
``start <t> <pid>``, ``line <i> <t>`` once line i has been written to stdout, and
``end <t> <how>`` when it stops on its own, on SIGTERM or on a closed stdout. The suite compares
the stored lines with the ``line`` facts and the start/end times of jobs sharing a lock. A line and
its record are written with SIGTERM blocked, so a stop never falls between them (only a SIGKILL
can, which leaves at most one printed line unrecorded).

``--hold-until PATH`` keeps the tool running after its lines until PATH exists, so a test can
decide when the job ends (after its fault, however slow the machine) instead of racing a timer.
"""

import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, required=True)
parser.add_argument("--interval", type=float, default=0.0)
parser.add_argument("--record", required=True)
parser.add_argument("--label", required=True)
parser.add_argument("--hold-until", default="")
args = parser.parse_args()

record = open(args.record, "a", buffering=1)  # noqa: SIM115 - open for the whole run


def note(text: str) -> None:
    record.write(f"{text}\n")
    record.flush()


def stop(how: str, code: int) -> None:
    note(f"end {time.time():.6f} {how}")
    sys.exit(code)


signal.signal(signal.SIGTERM, lambda *_: stop("sigterm", 143))
note(f"start {time.time():.6f} {os.getpid()}")
blocked = {signal.SIGTERM}
for i in range(1, args.lines + 1):
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        sys.stdout.write(f"{args.label} line {i}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The runner is gone: nobody reads us any more.
        stop("pipe", 1)
    note(f"line {i} {time.time():.6f}")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    if args.interval:
        time.sleep(args.interval)
while args.hold_until and not os.path.exists(args.hold_until):
    time.sleep(0.05)
stop("exit", 0)
