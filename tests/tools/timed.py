"""A test tool that writes down when it ran: ``<dir>/<label>.start`` when it starts, and
``<dir>/<label>.end`` rewritten with the time of every line it prints (so the last value is its
end even when it is SIGKILLed). Prints ``INFO line i`` --lines times, --interval apart."""

import argparse
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--times-dir", required=True)
parser.add_argument("--label", required=True)
parser.add_argument("--lines", type=int, default=10)
parser.add_argument("--interval", type=float, default=0.05)
args = parser.parse_args()
times = Path(args.times_dir)
times.mkdir(parents=True, exist_ok=True)
(times / f"{args.label}.start").write_text(repr(time.time()))
end = times / f"{args.label}.end"
for i in range(1, args.lines + 1):
    print(f"INFO line {i}", flush=True)
    tmp = end.with_suffix(".tmp")
    tmp.write_text(f"{time.time()!r} {i}")
    tmp.replace(end)
    time.sleep(args.interval)
