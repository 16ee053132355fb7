"""A test tool: waits, then prints many wide numbered lines as fast as it can."""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=1000)
parser.add_argument("--width", type=int, default=400)
parser.add_argument("--wait", type=float, default=0.0)
args = parser.parse_args()
time.sleep(args.wait)
for i in range(1, args.lines + 1):
    print(f"INFO line {i} " + "x" * args.width, flush=False)
