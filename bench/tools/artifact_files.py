"""Writes ``--files`` files of ``--mib`` MiB of random bytes into $JOBRUNNER_OUTPUT_DIR."""

import argparse
import os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--files", type=int, default=4)
parser.add_argument("--mib", type=int, default=256)
args = parser.parse_args()

out = Path(os.environ["JOBRUNNER_OUTPUT_DIR"])
block = os.urandom(4 * 1024 * 1024)  # random, so nothing on the way can compress it
for n in range(args.files):
    with (out / f"part-{n:02d}.bin").open("wb") as f:
        for _ in range(args.mib // 4):
            f.write(block)
print(f"INFO wrote {args.files} files of {args.mib} MiB", flush=True)
