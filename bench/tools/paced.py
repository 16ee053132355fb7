"""Prints ``--rate`` lines per second for ``--seconds``; each line carries the monotonic clock
(system-wide on Linux) at the moment it was written, so a reader can compute the delay."""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--rate", type=float, default=100.0)
parser.add_argument("--seconds", type=float, default=30.0)
parser.add_argument("--delay", type=float, default=0.0)
args = parser.parse_args()

out = sys.stdout
time.sleep(args.delay)
count = int(args.rate * args.seconds)
start = time.monotonic()
for i in range(1, count + 1):
    due = start + (i - 1) / args.rate
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    out.write(f"INFO t={time.monotonic():.6f} line {i}\n")
    out.flush()
