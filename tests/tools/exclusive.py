"""A test tool that proves it is alone: holds an exclusive flock on --lockfile while it runs.

Appends "<label>" to --order-file when it starts. If another holder has the lock, it prints
OVERLAP and exits 3 (two jobs held the same slot at once).
"""

import argparse
import fcntl
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lockfile", required=True)
parser.add_argument("--order-file", required=True)
parser.add_argument("--label", required=True)
parser.add_argument("--seconds", type=float, default=0.3)
args = parser.parse_args()
with open(args.lockfile, "a") as lock:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("ERROR OVERLAP: another job holds the slot", flush=True)
        sys.exit(3)
    with open(args.order_file, "a") as order:
        order.write(args.label + "\n")
    print(f"INFO started {args.label}", flush=True)
    time.sleep(args.seconds)
    print(f"INFO finished {args.label}", flush=True)
