"""Instructions of one stretch of a child process, counted by ``valgrind --tool=callgrind``.

Wall and CPU time move with a shared host's load; instructions do not. The child marks the
stretch to count: it calls ``os.sched_yield()`` as the stretch begins and ``os.getpgrp()`` as
it ends; callgrind zeroes its counts before the first (``--zero-before=sched_yield``) and dumps
them before the second, so the dump holds that stretch alone (start-up imports left out).
Used by ``bench.replay_cost``, ``bench.line_cleaning`` and ``bench.projector_lines_cost``.
"""

from __future__ import annotations

import re
from pathlib import Path

# glibc's mmap threshold fixed (it otherwise grows with what was freed): asyncpg's COPY buffer,
# grown by realloc, is then always mapped and moved by mremap, never copied by a realloc whose
# copying or not depended on the heap's layout (±300 instructions an event from run to run).
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
# What a counted child's environment adds: one hash seed, since string hashes decide how many
# probes a dict or set look-up takes (~0.1 % of the count moving from run to run otherwise),
# and a fixed mmap threshold.
COUNTED_ENV = {"PYTHONHASHSEED": "0", **MALLOC_FIXED}


def counted_argv(argv: list[str], dump: Path) -> list[str]:
    """``argv`` run under callgrind, its marked stretch dumped to ``<dump>.1``."""
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={dump}",
        "--zero-before=sched_yield",
        "--dump-before=getpgrp",
        *argv,
    ]


def dumped_instructions(dump: Path) -> int:
    """The instructions (``Ir``) of the marked stretch: ``counted_argv``'s dump ``<dump>.1``."""
    path = Path(f"{dump}.1")
    text = path.read_text(errors="replace")
    match = re.search(r"^summary: (\d+)", text, re.M)
    if match is None or "Trigger: --dump-before=getpgrp" not in text:
        raise RuntimeError(f"{path} is not the marked stretch's dump")
    return int(match.group(1))
