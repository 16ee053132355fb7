"""A tool dies with its runner: a guardian process kills the runner's tools when the runner dies.

The kernel's parent-death signal needs code in the tool's process before its exec: a
``preexec_fn`` (the subprocess module then forks the whole runner) or ``setpriv``'s exec (about
1.2 ms of CPU per start on the tool's side, several ms of wall under load: deathsignal.py). With
a guardian, a tool starts directly (vfork, one exec) and the guarantee lives in another process:

- At the runner's start a small process (``guardian_main.py``, run by ``python -I -S``: nothing
  of jobrunner imported) starts in a session of its own, reading a pipe whose only writer is the
  runner. After each spawn the runner writes the tool's process group and its leader's start
  ticks (what tells it from a process that got its pid later); once the group is killed, that
  it is gone. One small ``write`` each: the guardian's CPU, not the runner's, does the rest.
- When the runner dies, SIGKILL included, the kernel closes its end: at the end of file the
  guardian kills every group still written down, checked against pid reuse as
  ``orphans.kill_group`` does, and exits.
- A spawn the runner died in the middle of (after the clone, before it could write the group) is
  found without a write: every tool gets the runner's *tag*, the read end of a pipe of its own
  (``pass_fds``), and ``JOBRUNNER_GUARDIAN=<token>`` in its environment. A child holds the tag
  from its clone on (it copies the runner's file table, and keeps the tag through the closing of
  the other descriptors and the exec), and the token from its exec on (a tool may close the
  tag; its environment as the kernel shows it stays). The child also holds a copy of the
  runner's end of the guardian's pipe until it closes its descriptors just before the exec, so
  the guardian's end of file comes only after every such child holds the tag alone: its scan of
  /proc for the tag or the token misses none, whatever the timing. It repeats the scan until
  one finds nothing (a fork of a tool between two scans is found by the next).
- A guardian that dies is noticed at once (its pidfd in the event loop) or at the next write
  (it fails): the runner kills it for good (by its pid), starts another and writes every live
  tool again. Where none can run (no /proc, no ``pidfd_open``, it cannot start), tools start as
  before, through setpriv or the ``preexec_fn`` (deathsignal.py).
- Runner and guardian killed together: the tools run on until a runner starts on the host and
  ends them from its ledger (orphans.py), as it does for their descendants today.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import structlog

from jobrunner.services.runner.guardian_main import MARKER

log = structlog.get_logger()

_PROGRAM = str(Path(__file__).with_name("guardian_main.py"))


class Guardian:
    """The runner's side: the guardian process, its pipe, and the live tools written to it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # the runner's end of the guardian's pipe
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tag: int | None = None
        self._token = os.urandom(12).hex()
        self._groups: dict[int, int] = {}  # the live tools: process group → start ticks

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def tag(self) -> int | None:
        """The descriptor every tool inherits (``pass_fds``); None while no guardian runs."""
        return self._tag if self._proc is not None else None

    def environment(self, env: dict[str, str] | None) -> dict[str, str]:
        """The tool's environment with the runner's token (from the runner's own for None)."""
        return {**(os.environ if env is None else env), MARKER: self._token}

    def start(self) -> bool:
        """Have a guardian running, watched in the running event loop if any (True: tools
        start directly)."""
        if self._proc is not None and self._proc.poll() is None:
            self._watch()
            return True
        return self._restart()

    def _launch(self) -> bool:
        if not hasattr(os, "pidfd_open") or not os.path.isdir("/proc/self/fd"):
            return False
        if self._tag is None:
            tag, unused = os.pipe()
            os.close(unused)
            self._tag = tag
        read, write = os.pipe()
        try:
            inode = str(os.fstat(self._tag).st_ino)
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _PROGRAM, inode, self._token],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a signal to the runner's group leaves it alone
            )
            self._pidfd = os.pidfd_open(self._proc.pid)
        except OSError as exc:
            log.warning("cannot start the tool guardian: tools start through setpriv", error=exc)
            os.close(write)
            self._stop_process()
            return False
        finally:
            os.close(read)
        self._fd = write
        self._watch()
        return True

    def watch(self, pgid: int, started: int) -> None:
        """The tool of this group was started: killed should the runner die."""
        self._groups[pgid] = started
        self._write(b"+%d %d\n" % (pgid, started))

    def forget(self, pgid: int) -> None:
        """The tool's group was killed: nothing left to kill."""
        started = self._groups.pop(pgid, None)
        if started is not None:
            self._write(b"-%d %d\n" % (pgid, started))

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line)  # shorter than PIPE_BUF: all of it or an error
        except OSError as exc:  # gone (EPIPE), or stuck with a full pipe (EAGAIN)
            log.warning("the tool guardian stopped reading: started again", error=repr(exc))
            self._restart()

    def _restart(self) -> bool:
        """A new guardian, told of every live tool (none is lost: a new one reads at once)."""
        self._stop_process()
        if not self._launch() or self._fd is None:
            if self._groups:
                log.error("no tool guardian: running tools die with the runner via the ledger")
            return False
        lines = b"".join(b"+%d %d\n" % item for item in self._groups.items())
        try:
            while lines:  # more than PIPE_BUF, perhaps: blocking, until all of it is written
                lines = lines[os.write(self._fd, lines) :]
        except OSError:
            self._stop_process()
            return False
        os.set_blocking(self._fd, False)
        return True

    def _stop_process(self) -> None:
        """Kill the guardian before closing its pipe: an end of file would make it kill the
        runner's tools."""
        if self._loop is not None and self._pidfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._pidfd)
        self._loop = None
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        for fd in (self._pidfd, self._fd):
            if fd is not None:
                os.close(fd)
        self._pidfd = self._fd = None

    def _watch(self) -> None:
        """Learn of the guardian's death at once in the running loop (tests run many loops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is self._loop or self._pidfd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._pidfd)
        loop.add_reader(self._pidfd, self._died)
        self._loop = loop

    def _died(self) -> None:
        log.warning("the tool guardian died: started again")
        self._restart()


GUARDIAN = Guardian()
