"""A test tool: prints numbered lines at a chosen pace, then exits with a chosen code."""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=5)
parser.add_argument("--interval", type=float, default=0.0)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--stderr-every", type=int, default=0)
args = parser.parse_args()
for i in range(1, args.lines + 1):
    out = sys.stderr if args.stderr_every and i % args.stderr_every == 0 else sys.stdout
    print(f"INFO line {i} [{i}/{args.lines}]", file=out, flush=True)
    if args.interval:
        time.sleep(args.interval)
sys.exit(args.exit_code)
