"""A test tool: prints "ready", waits for the file --go, then floods --lines lines at once, writes
the file --done and exits 0 (the test knows the tool ended while its output may be unread)."""

import argparse
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, required=True)
parser.add_argument("--go", required=True)
parser.add_argument("--done", required=True)
args = parser.parse_args()
print("ready", flush=True)
while not Path(args.go).exists():
    time.sleep(0.02)
sys.stdout.write("".join(f"flood line {i:08d} {'x' * 40}\n" for i in range(1, args.lines + 1)))
sys.stdout.flush()
Path(args.done).write_text("exited")
