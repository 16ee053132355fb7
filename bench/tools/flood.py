"""Prints ``--lines`` lines of exactly 80 bytes (newline included) as fast as a pipe takes them."""

import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=1_000_000)
args = parser.parse_args()

write = sys.stdout.buffer.write
BLOCK = 1000
pad = "x" * 80
for base in range(0, args.lines, BLOCK):
    n = min(BLOCK, args.lines - base)
    # "INFO line 0000123 " + padding to 79 characters + "\n"
    write("".join(f"{f'INFO line {base + i + 1:07d} {pad}'[:79]}\n" for i in range(n)).encode())
sys.stdout.buffer.flush()
