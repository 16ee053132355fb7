"""The bench's paced tool in C (bench/tools/paced.c), compiled at the bench's start with the
machine's ``cc`` into a cache directory; the Python tool (bench/tools/paced.py) where there is
no compiler. Same arguments, same output.

Why: the Python tool uses about 80 µs of CPU per line, so 100 of them at 200 lines/s each ate
most of the two cores the system under measurement runs on. Compiled per machine, not committed:
a binary in the repository would be opaque and tied to one architecture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "tools" / "paced.c"
PYTHON_ARGV = (sys.executable, "-m", "bench.tools.paced")


@dataclass(frozen=True)
class PacedTool:
    """The paced tool the bench runs: its argv (before the arguments) and what it is."""

    argv: tuple[str, ...]
    kind: str  # "C" or "Python"
    note: str = ""  # why the Python tool, when it is


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jobrunner-bench"


def compile_paced(cache: Path | None = None, compiler: str | None = None) -> PacedTool:
    """The compiled C tool, built once per source version (the file name carries its hash);
    the Python tool when no compiler is found or the compiler fails."""
    cc = compiler or shutil.which("cc")
    if cc is None:
        return PacedTool(PYTHON_ARGV, "Python", "no cc on this machine")
    source = SOURCE.read_bytes()
    directory = cache or cache_dir()
    binary = directory / f"paced-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return PacedTool((str(binary),), "C")
    directory.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: a bench started at the same moment never runs
    # a half-written binary.
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, "-O2", "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return PacedTool(PYTHON_ARGV, "Python", f"cc failed: {reason[0]}")
    partial.replace(binary)
    return PacedTool((str(binary),), "C")
