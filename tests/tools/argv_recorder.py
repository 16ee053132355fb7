"""A test tool: writes the argv it received as JSON to $ARGV_RECORD_DIR/<pid>.json, then prints
each argument as one output line (so tests can also check how output is shown)."""

import json
import os
import sys
from pathlib import Path

record_dir = os.environ.get("ARGV_RECORD_DIR")
if record_dir:
    path = Path(record_dir) / f"{os.getpid()}.json"
    path.write_text(json.dumps(sys.argv[1:]))
for arg in sys.argv[1:]:
    print(f"arg: {arg}", flush=True)
