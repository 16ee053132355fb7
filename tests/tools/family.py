"""A test tool with a family: forks a grandchild that ignores SIGTERM, reports both pids, sleeps.

Writes "<tool pid> <grandchild pid>" to --pidfile, prints "family ready", then sleeps --seconds.
With --count-file, appends one line per start (a job that ran twice shows two).
"""

import argparse
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--pidfile", required=True)
parser.add_argument("--seconds", type=float, default=600)
parser.add_argument("--count-file", default="")
parser.add_argument("--ignore-term", action="store_true", help="the tool itself ignores SIGTERM")
args = parser.parse_args()
if args.count_file:
    with open(args.count_file, "a") as f:
        f.write(f"{os.getpid()}\n")
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen(
    [
        sys.executable,
        "-c",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "while True: time.sleep(1)\n",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
with open(args.pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}\n")
os.replace(args.pidfile + ".tmp", args.pidfile)
print("family ready", flush=True)
time.sleep(args.seconds)
