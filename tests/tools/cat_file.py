"""A test tool that prints a file's bytes exactly as they are (for the property tests)."""

import sys
from pathlib import Path

path = sys.argv[sys.argv.index("--file") + 1]
sys.stdout.buffer.write(Path(path).read_bytes())
sys.stdout.buffer.flush()
