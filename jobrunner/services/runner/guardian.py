"""A tool dies with its runner: a guardian process kills the runner's tools when the runner dies.

The kernel's parent-death signal needs code in the tool's process before its exec: a
``preexec_fn`` (the subprocess module then forks the whole runner) or ``setpriv``'s exec (about
1.2 ms of CPU per start on the tool's side, several ms of wall under load: deathsignal.py). With
a guardian, a tool starts directly (vfork, one exec) and the guarantee lives in another process:

- At the runner's start a small process (``guardian_main.py``, run by ``python -I -S``: nothing
  of jobrunner imported) starts in a session of its own, reading a pipe whose only writer is the
  runner. Before each spawn the runner writes the tool's serial, after it the tool's process
  group and its leader's start ticks (what tells it from a process that got its pid later);
  once the group is killed, that it is gone. One small ``write`` each: the guardian's CPU, not
  the runner's, does the rest.
- When the runner dies, SIGKILL included, the kernel closes its end: at the end of file the
  guardian kills every group still written down, checked against pid reuse as
  ``orphans.kill_group`` does, and exits.
- A spawn the runner died in the middle of (after the clone, before it could write the group) is
  found without it: every tool gets the runner's *tag*, a memfd named for the runner's random
  token and sealed empty (``pass_fds``; ``_sealed_tag`` says why), and
  ``JOBRUNNER_GUARDIAN=<token>.<serial>`` in its environment. A child holds the tag from its clone
  on (it copies the runner's file table, and keeps the tag through the closing of the other
  descriptors and the exec), and the token from its exec on (a tool may close the tag; its
  environment as the kernel shows it stays). The child also holds a copy of the runner's end of
  the guardian's pipe until it closes its descriptors just before the exec, so the guardian's end
  of file comes only after every such child holds the tag alone: its scan of /proc for the tag or
  the token misses none, whatever the timing. It repeats the scan until one finds nothing (a fork
  of a tool between two scans is found by the next). A process whose token names a tool already
  ended escaped its group (a detached descendant: the runner killed the group when the job ended)
  and is spared: it no longer belongs to a job. The runner itself holds the tag: the guardian
  never kills its parent.
- A guardian that dies is noticed at once (its pidfd in the event loop) or at the next write
  (it fails): another starts, is told every live tool, and only then is the old one killed (by
  its pid). One that cannot start, or ends of itself within seconds of its start, is tried
  again after a pause that doubles each time (0.1 s to 30 s); meanwhile, and where none can run
  at all (no /proc, ``pidfd_open``, ``memfd_create`` or its seals), tools start as before,
  through setpriv or the ``preexec_fn`` (deathsignal.py).
- A runner whose own process stalls (SIGSTOP, a long-blocked event loop) cannot stop
  its tools when their leases run out: the lease would pass to another runner while the tool
  runs on. So the runner writes, per tool whose job holds a lease, until when the lease is
  surely its own (``hold_until``: at the tool's start and at each confirmed renewal, one line);
  the guardian kills the tool's group once that passes with no later one written. The runner
  chooses the time (``lease.guardian_deadline``) after its own stop on a lost lease and before
  the lease can expire in NATS.
- Runner and guardian killed together: the tools run on until a runner starts on the host and
  ends them from its ledger (orphans.py), as it does for their descendants today.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from jobrunner.services.runner.guardian_main import MARKER, tag_name

log = structlog.get_logger()

_PROGRAM = str(Path(__file__).with_name("guardian_main.py"))
# A guardian that cannot start, or ends of itself younger than QUICK_DEATH seconds (its program
# gone after an upgrade, say), is tried again after RETRY_FIRST seconds, twice as long after each
# such failure up to RETRY_MAX; tools start with the kernel's parent-death signal meanwhile.
RETRY_FIRST = 0.1
RETRY_MAX = 30.0
QUICK_DEATH = 5.0


@dataclass
class _Running:
    """One guardian process and the runner's end of its pipe."""

    proc: subprocess.Popen[bytes]
    fd: int
    pidfd: int | None = None
    loop: asyncio.AbstractEventLoop | None = None
    since: float = 0.0

    def stop(self) -> None:
        """Kill it before closing its pipe: an end of file would make it kill the tools."""
        if self.loop is not None and self.pidfd is not None and not self.loop.is_closed():
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.pidfd)
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for fd in (self.pidfd, self.fd):
            if fd is not None:
                os.close(fd)


def _supported() -> bool:
    """pidfds, memfds and /proc: what a guardian needs (else tools start as deathsignal.py says)."""
    if not (hasattr(os, "pidfd_open") and hasattr(os, "memfd_create")):
        return False
    if not os.path.isdir("/proc/self/fd"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False  # a kernel without pidfd_open, or a seccomp filter refusing it
    return True


def _sealed_tag(name: str) -> int | None:
    """The runner's tag: an empty memfd sealed empty for good (None if the kernel cannot seal).

    Every tool of every job holds it. A read-only descriptor would not do: a tool can reopen
    /proc/self/fd/<tag> for writing. Unsealed, a tool could write into it (a channel from one
    job to the next) and grow it without bound (memory held by the runner for its whole life).
    Sealed against writes and growth, a reopened descriptor's writes fail (EPERM), and the seals
    themselves can no longer change.
    """
    try:
        tag = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:  # refused (a seccomp filter, say): as a kernel without memfds
        return None
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE
    try:
        fcntl.fcntl(tag, fcntl.F_ADD_SEALS, seals)
    except OSError:  # a kernel or a file system without seals: as one without memfds
        os.close(tag)
        return None
    return tag


class Guardian:
    """The runner's side: the guardian process, its pipe, and the live tools written to it."""

    def __init__(self) -> None:
        self._running: _Running | None = None
        self._tag: int | None = None
        self._token = os.urandom(12).hex()
        # Every tool started beside a guardian, by serial (in its environment's token): its
        # group and leader's start ticks once known, None while its spawn is under way.
        self._tools: dict[int, tuple[int, int] | None] = {}
        # The deadline last written for a tool (CLOCK_MONOTONIC): told again to a new guardian.
        self._deadlines: dict[int, float] = {}
        self._serial = 0
        self._failures = 0  # failed starts and quick deaths in a row
        self._retry: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return self._running.proc.pid if self._running else None

    @property
    def tag(self) -> int | None:
        """The descriptor every tool inherits (``pass_fds``); None while no guardian runs."""
        return self._tag if self._running is not None else None

    def start(self) -> bool:
        """Have a guardian running, watched in the running event loop if any (True: tools
        start directly)."""
        if self._running is not None and self._running.proc.poll() is None:
            self._watch()
            return True
        if self._tag is None:
            if not _supported():
                return False
            self._tag = _sealed_tag(tag_name(self._token))
            if self._tag is None:
                return False
        return self._restart()

    def reserve(self) -> int:
        """A spawn beside the guardian begins: its serial, written down before the clone."""
        self._serial += 1
        self._tools[self._serial] = None
        self._write(b"s%d\n" % self._serial)
        return self._serial

    def environment(self, env: dict[str, str] | None, serial: int) -> dict[str, str]:
        """The tool's environment with the runner's token and its serial (from the runner's own
        for None)."""
        return {**(os.environ if env is None else env), MARKER: f"{self._token}.{serial}"}

    def watch(self, serial: int, pgid: int, started: int, deadline: float | None = None) -> None:
        """The tool of this group was started: killed should the runner die, and at
        ``deadline`` (see hold_until) if one is given (in the same write: one per start)."""
        self._tools[serial] = (pgid, started)
        line = b"+%d %d %d\n" % (serial, pgid, started)
        if deadline is not None:
            self._deadlines[serial] = deadline
            line += b"d%d %.6f\n" % (serial, deadline)
        self._write(line)

    def hold_until(self, serial: int, deadline: float) -> None:
        """The tool's group is killed at ``deadline`` (``time.monotonic()``) unless a later one
        is written first: its job's lease may no longer be the runner's after it."""
        if serial in self._tools:
            self._deadlines[serial] = deadline
            self._write(b"d%d %.6f\n" % (serial, deadline))

    def forget(self, serial: int) -> None:
        """The tool's group was killed (or never started): nothing left to kill, and what
        escaped its group (a detached descendant) is spared."""
        self._deadlines.pop(serial, None)
        if self._tools.pop(serial, False) is not False:
            self._write(b"-%d\n" % serial)

    def _write(self, line: bytes) -> None:
        if self._running is None:
            return
        try:
            os.write(self._running.fd, line)  # shorter than PIPE_BUF: all of it or an error
        except OSError as exc:  # gone (EPIPE), or stuck with a full pipe (EAGAIN)
            log.warning("the tool guardian stopped reading: started again", error=repr(exc))
            self._restart()

    def _restart(self) -> bool:
        """A new guardian told of every live tool, then the old one killed: from the start of
        the new one to the old one's death two run, never none."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        old, self._running = self._running, None
        self._running = self._launch()
        if old is not None:
            old.stop()
        if self._running is None:
            self._failed()
            return False
        self._watch()
        return True

    def _launch(self) -> _Running | None:
        read, write = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _PROGRAM, self._token],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a signal to the runner's group leaves it alone
            )
        except OSError as exc:
            os.close(write)  # (no guardian to read its end)
            log.warning("cannot start the tool guardian", error=repr(exc))
            return None
        finally:
            os.close(read)
        running = _Running(proc, write, since=time.monotonic())
        lines = b"".join(
            b"s%d\n" % serial if tool is None else b"+%d %d %d\n" % (serial, *tool)
            for serial, tool in self._tools.items()
        ) + b"".join(b"d%d %.6f\n" % item for item in self._deadlines.items())
        try:
            running.pidfd = os.pidfd_open(proc.pid)
            while lines:  # more than PIPE_BUF, perhaps: blocking, until all of it is written
                lines = lines[os.write(write, lines) :]
            os.set_blocking(write, False)
        except OSError as exc:
            log.warning("cannot start the tool guardian", error=repr(exc))
            running.stop()  # killed first, its pipe closed after
            return None
        return running

    def _failed(self) -> None:
        """No guardian runs: try again later, ever less often while it keeps failing."""
        self._failures += 1
        delay = min(RETRY_FIRST * 2 ** (self._failures - 1), RETRY_MAX)
        log.error(
            "no tool guardian: tools start with the kernel's parent-death signal meanwhile",
            retry_in=delay,
            running_tools=len(self._tools),
        )
        with contextlib.suppress(RuntimeError):  # no loop: the next start() tries again
            self._retry = asyncio.get_running_loop().call_later(delay, self._restart)

    def stop(self) -> None:
        """Kill the guardian, leaving the tools alone (tests; the runner's lives as long as it)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._running is not None:
            self._running.stop()
            self._running = None

    def _watch(self) -> None:
        """Learn of the guardian's death at once in the running loop (tests run many loops)."""
        running = self._running
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is None or running.pidfd is None or loop is running.loop:
            return
        if running.loop is not None and not running.loop.is_closed():
            running.loop.remove_reader(running.pidfd)
        loop.add_reader(running.pidfd, self._died)
        running.loop = loop

    def _died(self) -> None:
        dead, self._running = self._running, None
        if dead is None:
            return
        dead.stop()
        # Killed (by a signal), it is replaced at once; one that ended of itself soon after its
        # start would end so again.
        if dead.proc.returncode >= 0 and time.monotonic() - dead.since < QUICK_DEATH:
            log.warning("the tool guardian ended at once", status=dead.proc.returncode)
            self._failed()
            return
        self._failures = 0
        log.warning("the tool guardian died: started again")
        self._restart()


GUARDIAN = Guardian()
