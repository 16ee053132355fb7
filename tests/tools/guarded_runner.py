"""Stands in for a runner with its tool guardian (guardian.py), for tests that SIGKILL it.

``python tests/tools/guarded_runner.py <mode> [pid ...]`` starts the guardian and prints
``guardian <pid>`` (again whenever another replaced it), then what the mode started, one
``<name> <pid>`` a line, then ``ready``, and waits to be killed. Modes:

- ``group``: a tool that started a child in its group (``tool``, ``child``);
- ``unwritten``: a tool the runner died before writing down (``tool``);
- ``unwritten-closed``: the same, and the tool closed the runner's tag at once and started a
  child in its group with an empty environment (``tool``, ``child``);
- ``before-exec``: a spawn held between its clone and its exec (``spawn``, printed by the child;
  ``ready`` does not follow: the runner is still in the spawn);
- ``strangers``: the processes whose pids follow written down as a reused pid would be (their
  start ticks one earlier) and as an ended tool's (written, then forgotten).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from jobrunner.services.runner import orphans
from jobrunner.services.runner.guardian import GUARDIAN
from jobrunner.services.runner.process import ToolProcess

CHILD = "sleep 60 & echo $!; wait"
# Closes the tag, then starts a child in its group with an empty environment: neither holds
# anything of the runner's but the group.
CLOSES_TAG = (
    "import os, subprocess, sys, time; os.close(int(sys.argv[1])); "
    "child = subprocess.Popen(['sleep', '60'], env={}); print(child.pid, flush=True); "
    "time.sleep(60)"
)


def say(*words: object) -> None:
    print(*words, flush=True)


async def report_guardians() -> None:
    shown = None
    while True:
        if GUARDIAN.pid != shown:
            shown = GUARDIAN.pid
            say("guardian", shown)
        await asyncio.sleep(0.02)


def hold_before_exec() -> None:
    """In the child, between its clone and its exec: say who it is, then take its time."""
    os.write(1, b"spawn %d\n" % os.getpid())
    time.sleep(2)


async def main(mode: str, pids: list[int]) -> None:
    assert GUARDIAN.start()
    reporter = asyncio.create_task(report_guardians())
    await asyncio.sleep(0.1)
    if mode == "group":
        tool = ToolProcess(["sh", "-c", CHILD], None, None)
        await tool.start()
        assert tool.proc is not None
        assert tool.proc.stdout is not None
        say("tool", tool.pid)
        say("child", int(await tool.proc.stdout.readline()))
    elif mode in ("unwritten", "unwritten-closed"):
        GUARDIAN.watch = lambda pgid, started: None  # type: ignore[method-assign]
        argv = ["sleep", "60"]
        if mode == "unwritten-closed":
            argv = [sys.executable, "-c", CLOSES_TAG, str(GUARDIAN.tag)]
        tool = ToolProcess(argv, None, None)
        await tool.start()
        say("tool", tool.pid)
        if mode == "unwritten-closed":
            assert tool.proc is not None
            assert tool.proc.stdout is not None
            say("child", int(await tool.proc.stdout.readline()))
    elif mode == "before-exec":
        assert GUARDIAN.tag is not None
        subprocess.Popen(  # noqa: ASYNC220 - the runner held in its spawn is the point
            ["sleep", "60"],
            env=GUARDIAN.environment(None),
            pass_fds=(GUARDIAN.tag,),
            start_new_session=True,
            preexec_fn=hold_before_exec,
        )
    elif mode == "strangers":
        reused, ended = pids
        GUARDIAN.watch(reused, (orphans.start_ticks(reused) or 0) - 1)
        GUARDIAN.watch(ended, orphans.start_ticks(ended) or 0)
        GUARDIAN.forget(ended)
    say("ready")
    await reporter


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(pid) for pid in sys.argv[2:]]))
