"""The bench's tools in C (bench/tools/*.c), compiled at the bench's start with the machine's
``cc`` into a cache directory; their Python versions (same arguments, same output) where there
is no compiler or it fails.

- The paced tool (bench/tools/paced.c; Python: bench/tools/paced.py): the Python tool uses
  about 80 µs of CPU per line, so 100 of them at 200 lines/s each ate most of the two cores the
  system under measurement runs on.
- The SSE clients (bench/tools/sseclients.c; Python: bench/tools/sseclients.py over
  bench/sse.py): the fan-out's 1,000 viewers and the noisy neighbour's flood follower, which in
  Python took a large share of the same two cores (bench/RESULTS.md, session 34).

Compiled per machine, not committed: a binary in the repository would be opaque and tied to one
architecture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"
PACED_SOURCE = TOOLS / "paced.c"
PACED_PYTHON_ARGV = (sys.executable, "-m", "bench.tools.paced")
SSECLIENTS_SOURCE = TOOLS / "sseclients.c"
SSECLIENTS_PYTHON_ARGV = (sys.executable, "-m", "bench.tools.sseclients")
CFLAGS = ("-O2", "-Wall", "-Wextra")


@dataclass(frozen=True)
class NativeTool:
    """A tool the bench runs: its argv (before the arguments) and what it is."""

    argv: tuple[str, ...]
    kind: str  # "C" or "Python"
    note: str = ""  # why the Python tool, when it is


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jobrunner-bench"


def compile_tool(
    source_path: Path,
    python_argv: tuple[str, ...],
    cache: Path | None = None,
    compiler: str | None = None,
) -> NativeTool:
    """The compiled C tool, built once per source version and flags (the file name carries
    their hash); the Python tool when no compiler is found or the compiler fails."""
    cc = compiler or shutil.which("cc")
    if cc is None:
        return NativeTool(python_argv, "Python", "no cc on this machine")
    source = source_path.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    directory = cache or cache_dir()
    binary = directory / f"{source_path.stem}-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return NativeTool((str(binary),), "C")
    directory.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: a bench started at the same moment never runs
    # a half-written binary.
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, *CFLAGS, "-o", str(partial), str(source_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return NativeTool(python_argv, "Python", f"cc failed: {reason[0]}")
    partial.replace(binary)
    return NativeTool((str(binary),), "C")


def compile_paced(cache: Path | None = None, compiler: str | None = None) -> NativeTool:
    """The paced tool: prints numbered lines with monotonic stamps at a rate."""
    return compile_tool(PACED_SOURCE, PACED_PYTHON_ARGV, cache, compiler)


def compile_sseclients(cache: Path | None = None, compiler: str | None = None) -> NativeTool:
    """The SSE clients: many streams followed and checked in one process."""
    return compile_tool(SSECLIENTS_SOURCE, SSECLIENTS_PYTHON_ARGV, cache, compiler)


def python_sseclients(note: str) -> NativeTool:
    """The Python SSE clients, chosen on purpose (to compare them with the C ones)."""
    return NativeTool(SSECLIENTS_PYTHON_ARGV, "Python", note)
