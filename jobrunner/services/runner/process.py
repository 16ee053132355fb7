"""Running a tool: no shell, its own process group, and a stop that reaches every descendant."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from jobrunner.common import deathsignal
from jobrunner.services.runner import orphans
from jobrunner.services.runner.guardian import GUARDIAN, Guardian
from jobrunner.services.runner.output import LineSplitter
from jobrunner.services.runner.priority import ToolPriority

READ_CHUNK = 256 * 1024  # the pipe's buffer in the runner
# Output handled per turn of the event loop, at most: a tool flooding its pipe then holds the
# runner for about a millisecond at a time, and the other jobs' lines, lease renewals and
# publishes get their turns in between (no noisy neighbour).
TURN_BYTES = 64 * 1024
# Only a pipe whose read was this small rests (``pump``): a tool printing a line at a time. A
# flood's pipe, read in large pieces anyway, is never held (noisy-neighbour runs with it held
# went no better, within their noise).
REST_BELOW_BYTES = 4096
GROUP_POLL = 0.05  # seconds between checks whether a stopped group has gone


class SpawnError(Exception):
    pass


class PidfdChildWatcher(asyncio.AbstractChildWatcher):
    """Learns of a child's exit through its pidfd in the running loop's epoll: Python 3.12's
    own watcher, for 3.11 (whose default starts a thread per child that blocks in ``waitpid``,
    then wakes the loop through its self-pipe: a thread's start and its wait for the
    interpreter lock on every job's way to its first line).

    Unlike 3.11's ``PidfdChildWatcher`` it is attached to no loop: each child is watched by the
    loop that started it, so it serves every loop of a process (tests run many in turn).
    """

    def add_child_handler(  # type: ignore[override]  # the same, typed loosely
        self, pid: int, callback: Callable[..., object], *args: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        # Asked by asyncio right after the spawn, before the loop turns: the child cannot have
        # been reaped yet, so its start is still in /proc (see ``_spawned``).
        spawned = _spawned.get()
        if spawned is not None:
            spawned[pid] = orphans.start_ticks(pid)
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, self._reap, loop, pid, pidfd, callback, args)

    @staticmethod
    def _reap(
        loop: asyncio.AbstractEventLoop,
        pid: int,
        pidfd: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        loop.remove_reader(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by someone else: its exit status is gone
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return False  # asyncio never asks: a handler goes once the child exited

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass

    def close(self) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def __enter__(self) -> PidfdChildWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# The start (clock ticks since boot) of the children spawned by the ``ToolProcess.start`` running
# in this context, as the pidfd watcher read them: a tool that exits at once may be reaped while
# asyncio still connects its pipes, and read after that, its start would be unknown (and its
# process group's leftovers beyond orphans.kill_group's reach). Each start has a dict of its
# own, dropped when it returns (or is cancelled); other children (an internal job's) are not
# recorded at all.
_spawned: contextvars.ContextVar[dict[int, int | None] | None] = contextvars.ContextVar(
    "_spawned", default=None
)


def watch_children_by_pidfd() -> bool:
    """Have asyncio learn of the process's children's exits through pidfds (Linux 5.3+), as
    Python 3.12 does by default; True if it now does. Called again, it changes nothing."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False  # 3.12 picks the pidfd watcher itself where the kernel has it
    if isinstance(asyncio.get_child_watcher(), PidfdChildWatcher):
        return True
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False  # a kernel without pidfd_open (or a seccomp filter refusing it)
    asyncio.set_child_watcher(PidfdChildWatcher())
    return True


class _Feed(asyncio.Protocol):
    """A tool's pipe handed straight to its ``StreamReader``.

    asyncio's subprocess transport passes each piece read from a pipe on with ``call_soon``
    (``BaseSubprocessTransport._call``): a second callback per read, a turn of the loop later.
    A tool printing a line at a time makes a read per line, so at 100 jobs printing 200 lines/s
    each that was 20,000 extra callbacks a second in the runner. The end of the pipe still goes
    the subprocess transport's way (the reader's end of file, the exit's bookkeeping), after
    every piece read before it, as before."""

    def __init__(self, reader: asyncio.StreamReader, pipe: asyncio.BaseProtocol) -> None:
        self.data_received = reader.feed_data  # type: ignore[method-assign]  # no frame between
        self._pipe = pipe

    def eof_received(self) -> bool | None:
        return self._pipe.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe.connection_lost(exc)


def _feed_readers_directly(proc: asyncio.subprocess.Process) -> None:
    """Each of the tool's pipes feeds its reader with no callback in between (``_Feed``)."""
    # The process's transport is private to asyncio's Process (the public streams hold only
    # their readers); without it, or a pipe's transport, the pipes keep asyncio's own way.
    transport: asyncio.SubprocessTransport | None = getattr(proc, "_transport", None)
    if transport is None:
        return
    for fd, reader in ((1, proc.stdout), (2, proc.stderr)):
        pipe = transport.get_pipe_transport(fd)
        if reader is not None and isinstance(pipe, asyncio.ReadTransport):
            pipe.set_protocol(_Feed(reader, pipe.get_protocol()))


# Called with each chunk's complete lines (stream, lines, the latest state of a \r progress bar
# or None, time of the read); the awaitable waits for buffer room.
LineSink = Callable[[str, list[str], str | None, datetime], None]
Room = Callable[[], Awaitable[None]]
# What a pipe waits for after a read at ``now``, its previous read at ``last``: the end of its
# rest, or None when it does not rest (see ``pump``).
Rest = Callable[[float, float], Awaitable[None] | None]


class ToolProcess:
    """One tool run. Its pid is its process group id (``start_new_session``)."""

    def __init__(
        self,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str] | None,
        priority: ToolPriority | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.priority = priority  # None: the runner's own priority
        self.proc: asyncio.subprocess.Process | None = None
        self.started_ticks: int | None = None
        # The guardian told of the tool, and the tool's serial there.
        self._guarded: tuple[Guardian, int] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise SpawnError(
                f"cannot start {self.argv[0]!r}: working directory {self.cwd!r} does not exist"
            )
        # If the runner itself is killed, its guardian kills the tool's group (guardian.py): the
        # tool starts directly, with the runner's tag. Without a guardian the kernel kills the
        # tool itself (deathsignal.py). Its descendants are found by process group too when the
        # runner restarts or another runner declares it lost.
        guard = GUARDIAN
        tag = guard.tag
        env: dict[str, str] | None = self.env
        pass_fds: tuple[int, ...] = ()
        if tag is not None:
            argv, preexec_fn = self.argv, None
            self._guarded = guard, guard.reserve()
            env, pass_fds = guard.environment(self.env, self._guarded[1]), (tag,)
        else:
            await deathsignal.probe()  # (a process started and waited for: off the loop)
            argv, preexec_fn = deathsignal.launch(self.argv, self.cwd, self.env)
        spawned: dict[int, int | None] = {}
        recording = _spawned.set(spawned)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec_fn,
                pass_fds=pass_fds,
                limit=READ_CHUNK,
            )
        except BaseException as exc:
            if self._guarded is not None:  # no tool of this serial runs
                self._guarded[0].forget(self._guarded[1])
                self._guarded = None
            if not isinstance(exc, (OSError, ValueError)):
                raise
            reason = getattr(exc, "strerror", None) or str(exc)
            name = getattr(exc, "filename", None)
            detail = f"{reason}: {name!r}" if name else reason
            raise SpawnError(f"cannot start {self.argv[0]!r}: {detail}") from None
        finally:
            _spawned.reset(recording)
        _feed_readers_directly(self.proc)
        if self.priority is not None:
            self.priority.lower(self.proc)
        pid = self.proc.pid
        # As the watcher read it; else (another child watcher) read now.
        self.started_ticks = spawned[pid] if pid in spawned else orphans.start_ticks(pid)
        if self._guarded is not None and self.started_ticks is not None:
            guard.watch(self._guarded[1], pid, self.started_ticks)

    async def pump(
        self, sink: LineSink, room: Room, max_line_bytes: int, pace: Rest | None = None
    ) -> None:
        """Read stdout and stderr until both close, handing each line to ``sink``.

        ``pace`` paces the reads of a tool that prints often: after a small read that emptied
        the pipe, the pipe rests until what ``pace`` returns is done (the runner's publish
        clock's next tick: the lines printed meanwhile would wait for it in the publisher
        anyway), so that they come in one read then instead of one read, wake-up and hand-over
        each. (Their timestamp is the read's: up to a rest late.)"""
        assert self.proc is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        await asyncio.gather(
            self._read(self.proc.stdout, "stdout", sink, room, max_line_bytes, pace),
            self._read(self.proc.stderr, "stderr", sink, room, max_line_bytes, pace),
        )

    @staticmethod
    async def _read(
        reader: asyncio.StreamReader,
        name: str,
        sink: LineSink,
        room: Room,
        max_line_bytes: int,
        pace: Rest | None,
    ) -> None:
        splitter = LineSplitter(max_line_bytes)
        loop = asyncio.get_running_loop()
        last_read = -math.inf
        while chunk := await reader.read(TURN_BYTES):
            # A chunk's lines go to the sink at once: the work is done per chunk, not per line.
            sink(name, splitter.feed(chunk), splitter.transient, datetime.now(UTC))
            splitter.transient = None
            await room()
            if len(chunk) == TURN_BYTES:
                # read() answers from its buffer without a pause while a flood fills it: yield.
                # (A shorter chunk emptied the buffer, so the next read waits anyway: no extra
                # turn of the loop per read for the many jobs that print a line at a time.)
                await asyncio.sleep(0)
            elif pace is not None and len(chunk) < REST_BELOW_BYTES:
                now = loop.time()
                if (resting := pace(now, last_read)) is not None:
                    await resting
                last_read = now
        if rest := splitter.close():
            sink(name, rest, None, datetime.now(UTC))

    async def wait(self) -> int:
        assert self.proc
        return await self.proc.wait()

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def end_group(self) -> None:
        """SIGKILL whatever is left of the tool's group: nothing for the guardian to kill."""
        self.signal_group(signal.SIGKILL)
        if self._guarded is not None:
            self._guarded[0].forget(self._guarded[1])
            self._guarded = None

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        return orphans.group_has_live_members(self.proc.pid)

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM to the whole group, then SIGKILL to whatever is left after the grace period.

        The grace period is for the whole group, not just the tool: a grandchild gets the same
        time to clean up as its parent.
        """
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while loop.time() < deadline and (self.proc.returncode is None or self.group_alive()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), GROUP_POLL)
        self.end_group()
        await self.proc.wait()
