"""Stands in for a runner with its tool guardian (guardian.py), for tests that SIGKILL it.

``python tests/tools/guarded_runner.py <mode> [pid ...]`` starts the guardian and prints
``guardian <pid>`` (again whenever another replaced it), then what the mode started, one
``<name> <pid>`` a line, then ``ready``, and waits to be killed; it exits at the end of its
standard input (its test ended, however: nothing left running). Modes:

- ``group``: a tool that started a child in its group (``tool``, ``child``);
- ``unwritten``: a tool the runner died before writing down (``tool``);
- ``unwritten-closed``: the same, and the tool closed the runner's tag at once and started a
  child in its group with an empty environment (``tool``, ``child``);
- ``before-exec``: a spawn held between its clone and its exec (``spawn``, printed by the child;
  ``ready`` does not follow: the runner is still in the spawn);
- ``strangers``: the processes whose pids follow written down as a reused pid would be (their
  start ticks one earlier) and as an ended tool's (written, then forgotten);
- ``detached``: two tools that each started a detached child (``setsid``: out of the tool's
  group, with its token and tag); the first tool's group then ended (``ended-detached``), the
  second runs on (``live-detached``);
- ``tag-only``: a tool that started a process holding nothing of the runner's but its tag
  (``setsid env -i``: out of the group, without the token; ``env -i`` keeps descriptors) as
  ``tag-only`` (``tool`` too);
- ``refused-once``: a tool (``tool``) while the guardian's next start is refused (EAGAIN, as a
  full pids cgroup does) once;
- ``pipe-lost``: a tool (``tool``), then the runner's end of the guardian's pipe closed while
  the runner lives on;
- ``pidfd-refused``: ``pidfd_open`` refused for the guardian started (a kernel or a seccomp
  filter without it: EPERM) and its kill late; says ``started False`` and lives on;
- ``pidfd-refused-later``: a tool (``tool``), then the guardian replaced while ``pidfd_open``
  is refused and kills are late: the old guardian and the new one are stopped with a live tool.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time

from jobrunner.services.runner import guardian, orphans
from jobrunner.services.runner.guardian import GUARDIAN
from jobrunner.services.runner.process import ToolProcess

CHILD = "sleep 60 & echo $!; wait"
DETACHED = "setsid sleep 60 >/dev/null 2>&1 & echo $!; wait"
TAG_ONLY = "setsid env -i sleep 60 >/dev/null 2>&1 & echo $!; wait"
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


def exit_at_end_of_input() -> None:
    """The test's end (its pipe closed, pytest killed included) ends the runner: its guardian
    then kills what it started."""
    sys.stdin.buffer.read()
    os._exit(0)


async def tool_with_child(script: str, name: str = "tool", child: str = "child") -> ToolProcess:
    tool = ToolProcess(["sh", "-c", script], None, None)
    await tool.start()
    assert tool.proc is not None
    assert tool.proc.stdout is not None
    say(name, tool.pid)
    pid = int(await tool.proc.stdout.readline())
    if script == DETACHED:
        # ``$!`` is known at the fork, before ``setsid`` ran: the child is out of the tool's
        # group only once it leads a session of its own (a loaded machine takes its time).
        while os.getsid(pid) != pid:  # noqa: ASYNC110 - a process's state, no event to await
            await asyncio.sleep(0.005)
    say(child, pid)
    return tool


def refuse_next_guardian() -> None:
    real = subprocess.Popen

    def popen(args: list[str], *rest: object, **options: object) -> object:
        if guardian._PROGRAM in args:
            subprocess.Popen = real  # type: ignore[misc]
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real(args, *rest, **options)  # type: ignore[call-overload]

    subprocess.Popen = popen  # type: ignore[assignment,misc]


def refuse_pidfds() -> None:
    real_pidfd_open, real_signal = os.pidfd_open, subprocess.Popen.send_signal

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if pid != os.getpid():
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_pidfd_open(pid, flags)

    def late_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        time.sleep(0.3)  # the runner preempted: the guardian gets to run first
        real_signal(proc, sig)

    os.pidfd_open = pidfd_open
    subprocess.Popen.send_signal = late_signal  # type: ignore[method-assign]


async def main(mode: str, pids: list[int]) -> None:
    threading.Thread(target=exit_at_end_of_input, daemon=True).start()
    if mode == "pidfd-refused":
        refuse_pidfds()
        say("started", GUARDIAN.start())
        await asyncio.sleep(1)  # what the guardian needs to kill its runner, if it would
        say("ready")
        await asyncio.sleep(3600)
    assert GUARDIAN.start()
    reporter = asyncio.create_task(report_guardians())
    await asyncio.sleep(0.1)
    if mode == "group":
        await tool_with_child(CHILD)
    elif mode == "detached":
        ended = await tool_with_child(DETACHED, "ended-tool", "ended-detached")
        await tool_with_child(DETACHED, "live-tool", "live-detached")
        ended.end_group()
        await ended.wait()
    elif mode == "tag-only":
        await tool_with_child(TAG_ONLY, child="tag-only")
    elif mode in ("refused-once", "pipe-lost", "pidfd-refused-later"):
        tool = ToolProcess(["sleep", "60"], None, None)
        await tool.start()
        say("tool", tool.pid)
        if mode == "refused-once":
            refuse_next_guardian()
        elif mode == "pidfd-refused-later":
            refuse_pidfds()
            say("started", GUARDIAN._restart())
            await asyncio.sleep(1)  # what a guardian needs to kill the tool, if it would
        else:
            running = GUARDIAN._running
            assert running is not None
            lost, running.fd = running.fd, os.open(os.devnull, os.O_WRONLY)
            os.close(lost)
    elif mode in ("unwritten", "unwritten-closed"):
        GUARDIAN.watch = lambda *_: None  # type: ignore[method-assign]
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
            env=GUARDIAN.environment(None, GUARDIAN.reserve()),
            pass_fds=(GUARDIAN.tag,),
            start_new_session=True,
            preexec_fn=hold_before_exec,
        )
    elif mode == "strangers":
        reused, ended = pids
        GUARDIAN.watch(GUARDIAN.reserve(), reused, (orphans.start_ticks(reused) or 0) - 1)
        serial = GUARDIAN.reserve()
        GUARDIAN.watch(serial, ended, orphans.start_ticks(ended) or 0)
        GUARDIAN.forget(serial)
    say("ready")
    await reporter


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(pid) for pid in sys.argv[2:]]))
