"""Running a tool: no shell, its own process group, and a stop that reaches every descendant."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from jobrunner.common import deathsignal
from jobrunner.common.loglevels import STREAMS
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
# A resting pipe whose read brought more lines than this is not polled while it rests: the
# tool's writes meanwhile wait in the kernel's pipe buffer and come in one read, instead of one
# wake-up of the loop and one read each (at 100 jobs printing 200 lines/s, 20,000 a second for
# 2,000 reads). After a read of one line (a tool printing no faster than the clock) nothing
# would be saved and the two epoll_ctl calls would cost.
UNPOLLED_REST_ABOVE_LINES = 1
GROUP_POLL = 0.05  # seconds between checks whether a stopped group has gone


class SpawnError(Exception):
    pass


def _reap(
    loop: asyncio.AbstractEventLoop,
    pid: int,
    pidfd: int,
    callback: Callable[..., object],
    args: tuple[Any, ...],
) -> None:
    """The child's pidfd is readable: it exited. Reaped, its exit code to ``callback``."""
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
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, _reap, loop, pid, pidfd, callback, args)

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


class _Pipe:
    """A tool's pipe read straight into its ``StreamReader`` by the runner's loop.

    asyncio's subprocess transport connects each pipe in a turn of the loop of its own, then
    the process in another (``_connect_pipes``), and passes each piece read on with
    ``call_soon``: on every job's way to its first line, turns of the loop in which the
    runner's other tasks run first; and a callback more per read of a tool printing a line at
    a time. Here the pipe is watched from the spawn on, and each read goes to the reader at once.
    The reader pauses it as asyncio's transport would (its buffer over twice its limit: a
    flood waits in the pipe while the publisher has no room)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._paused = False
        self._resting = False  # unpolled by a rest (``rest_unpolled``), not by its reader
        self.reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        self.reader.set_transport(self)  # type: ignore[arg-type]  # pause/resume is all it uses
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close()
            self.reader.set_exception(exc)
            return
        if data:
            self.reader.feed_data(data)
        else:
            self._close()
            self.reader.feed_eof()

    def pause_reading(self) -> None:
        if not self._paused and self._fd >= 0:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def rest_unpolled(self) -> bool:
        """Stop polling for a rest (``pump``); False when the pipe is not polled anyway (its
        reader's buffer is full, or it ended): then the rest leaves it as it is."""
        if self._paused or self._fd < 0:
            return False
        self.pause_reading()
        self._resting = True
        return True

    def end_rest(self) -> None:
        """Poll again after a rest, and read what the tool printed meanwhile at once: in the
        turn of the loop that ends the rest (its tick's), not a turn later, when the message
        leaving on that tick would have gone without it (and its lines waited a window more).
        Only a pipe the rest unpolled: called twice, or after the reader paused it for a full
        buffer, it changes nothing."""
        if self._resting:
            self._resting = False
            self.resume_reading()
            if not self._paused and self._fd >= 0:
                self._read_ready()

    def resume_reading(self) -> None:
        if self._paused and self._fd >= 0:
            self._paused = False
            self._loop.add_reader(self._fd, self._read_ready)

    def _close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._close()


class _Child:
    """A started tool as the runner sees it: its pid, its pipes' readers, its exit."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes], pipes: list[int]
    ) -> None:
        self.pid = popen.pid
        # Kept until the exit is reaped: a Popen dropped while its child runs is reaped by the
        # next Popen made (subprocess._cleanup), which would take the exit status from here.
        self._popen = popen
        self.pipes = [_Pipe(loop, fd) for fd in pipes]  # stdout, stderr
        self.stdout = self.pipes[0].reader
        self.stderr = self.pipes[1].reader
        self.returncode: int | None = None
        self._exit: asyncio.Future[int] = loop.create_future()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd on this kernel: a thread waits instead
            threading.Thread(target=self._wait_in_thread, args=(loop,), daemon=True).start()
        else:
            loop.add_reader(pidfd, _reap, loop, self.pid, pidfd, self._exited, ())

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            code = 255
        else:
            code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._exited, self.pid, code)

    def _exited(self, pid: int, returncode: int) -> None:
        self.returncode = self._popen.returncode = returncode
        if not self._exit.done():
            self._exit.set_result(returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def close(self) -> None:
        """Its pipes closed, unread (a start given up on)."""
        for pipe in self.pipes:
            pipe.close()


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
        self.proc: _Child | None = None
        self.started_ticks: int | None = None
        # The guardian told of the tool, and the tool's serial there.
        self._guarded: tuple[Guardian, int] | None = None
        # The last deadline given (``hold_until``), and whether a guardian was told it.
        self._held_until: float | None = None
        self._held_by_guardian = False

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
        # The pipes are made here (close-on-exec: the tool gets only its ends, as its 1 and 2).
        # Every descriptor made is closed if the start fails: at the runner's descriptor limit
        # (EMFILE) a pipe fails like the spawn itself, and the job fails, not the runner.
        made: list[int] = []
        try:
            made.extend(os.pipe())
            made.extend(os.pipe())
            out_r, out_w, err_r, err_w = made
            # In the loop's thread, as asyncio's own subprocess_exec spawns (vfork, then exec).
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec_fn,
                pass_fds=pass_fds,
            )
        except BaseException as exc:
            for fd in made:
                os.close(fd)
            if self._guarded is not None:  # no tool of this serial runs
                self._guarded[0].forget(self._guarded[1])
                self._guarded = None
            if not isinstance(exc, (OSError, ValueError)):
                raise
            reason = getattr(exc, "strerror", None) or str(exc)
            name = getattr(exc, "filename", None)
            detail = f"{reason}: {name!r}" if name else reason
            raise SpawnError(f"cannot start {self.argv[0]!r}: {detail}") from None
        os.close(out_w)  # the tool's ends: the runner keeps only its own
        os.close(err_w)
        # From the spawn to here nothing awaits: a cancel cannot leave the tool unowned, and it
        # cannot have been reaped yet, so its start is still in /proc.
        pid = popen.pid
        self.started_ticks = orphans.start_ticks(pid)
        self.proc = _Child(asyncio.get_running_loop(), popen, [out_r, err_r])
        if self.priority is not None:
            self.priority.lower(self.proc)
        if self._guarded is not None and self.started_ticks is not None:
            guard.watch(self._guarded[1], pid, self.started_ticks, self._held_until)
            self._held_by_guardian = self._held_until is not None

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
        reads = [
            asyncio.ensure_future(self._read(pipe, name, sink, room, max_line_bytes, pace))
            for pipe, name in zip(self.proc.pipes, STREAMS, strict=True)
        ]
        try:
            await asyncio.gather(*reads)
        finally:
            # Given up on (someone outside the group holds a pipe open), or one read failed (its
            # sink raised): the other read is not left waiting on its pipe for ever.
            for read in reads:
                read.cancel()
            await asyncio.wait(reads)
            self.proc.close()

    @staticmethod
    async def _read(
        pipe: _Pipe,
        name: str,
        sink: LineSink,
        room: Room,
        max_line_bytes: int,
        pace: Rest | None,
    ) -> None:
        reader = pipe.reader
        splitter = LineSplitter(max_line_bytes)
        loop = asyncio.get_running_loop()
        last_read = -math.inf
        while chunk := await reader.read(TURN_BYTES):
            # A chunk's lines go to the sink at once: the work is done per chunk, not per line.
            lines = splitter.feed(chunk)
            read_lines = len(lines)  # (counted before the sink, which may take the list)
            sink(name, lines, splitter.transient, datetime.now(UTC))
            splitter.transient = None
            await room()
            if len(chunk) == TURN_BYTES:
                # read() answers from its buffer without a pause while a flood fills it: yield.
                # (A shorter chunk emptied the buffer, so the next read waits anyway: no extra
                # turn of the loop per read for the many jobs that print a line at a time.)
                await asyncio.sleep(0)
            elif pace is not None and len(chunk) < REST_BELOW_BYTES:
                now = loop.time()
                resting = pace(now, last_read)
                last_read = now
                if resting is None:
                    continue
                # (A flood starting meanwhile blocks on the full pipe for the rest at most:
                # the publisher would hold its lines as long.)
                # (The pipe is read again as its rest ends: ``end_rest``.)
                unpolled = read_lines > UNPOLLED_REST_ABOVE_LINES and pipe.rest_unpolled()
                try:
                    await resting
                finally:
                    if unpolled:
                        pipe.end_rest()
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

    def hold_until(self, deadline: float) -> None:
        """Have the guardian kill the tool's group at ``deadline`` (time.monotonic()) unless a
        later one comes first (the job's lease was renewed). Given before the start, it goes to
        the guardian with the tool's group. Without a guardian, nothing."""
        self._held_until = deadline
        if self._guarded is not None and self.proc is not None:
            self._guarded[0].hold_until(self._guarded[1], deadline)
            self._held_by_guardian = True

    def killed_at_deadline(self, returncode: int) -> bool:
        """Did the tool end as the guardian ends it at a deadline passed (SIGKILLed, the last
        deadline told over)? The runner stalled past its lease."""
        held = self._held_until
        return (
            returncode == -signal.SIGKILL
            and self._held_by_guardian
            and held is not None
            and time.monotonic() >= held
        )

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
