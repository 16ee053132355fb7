"""CPU of one rest of a busy tool's pipe in the runner: ``python -m bench.pipe_rest_cost [N]``.

``process._Pipe.rest_unpolled`` then ``end_rest`` (which reads the pipe at once: empty here),
``N`` times on asyncio's loop, as the runner runs them about once a message of every job that
prints more than a line a window. Run it from two trees, alternating (bench/RESULTS.md,
session 33).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from jobrunner.services.runner.process import _Pipe


async def main(rests: int) -> None:
    read_end, write_end = os.pipe()
    pipe = _Pipe(asyncio.get_running_loop(), read_end)
    started = time.process_time()
    for _ in range(rests):
        pipe.rest_unpolled()
        pipe.end_rest()
    print(f"{(time.process_time() - started) / rests * 1e6:.2f} µs a rest")
    pipe.close()
    os.close(write_end)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
