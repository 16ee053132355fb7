"""A tool dies with its runner: the kernel's parent-death signal (Linux), set in the tool's own
process before the tool runs.

Set from Python (a ``preexec_fn``), it makes the subprocess module fork() the whole runner instead
of using vfork(): copying the runner's page tables was most of a job's dispatch (about 5 ms on an
idle machine, 30 ms under load, where vfork takes under 1 ms). So where util-linux's ``setpriv``
is installed, a tool is started through it: ``setpriv --pdeathsig KILL -- tool ...`` sets the
signal and execs the tool in the same process (same pid, same process group; the signal survives
the exec).

setpriv execs with ``execvp``, which hands a file the kernel cannot execute to ``/bin/sh``: only
ELF binaries and ``#!`` scripts go through setpriv. Anything else, a tool that cannot be found
(its SPAWN_FAILED keeps the reason the subprocess module gives), and a machine without setpriv
start the way they always did, with the ``preexec_fn``: a tool never runs through a shell.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# What the kernel executes itself: an ELF binary, or a script naming its interpreter.
_DIRECT_MAGIC = (b"\x7fELF", b"#!")


def die_with_runner() -> None:
    """In the child, before exec: the kernel sends SIGKILL should the runner die."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@functools.cache
def setpriv() -> str | None:
    """The path of a ``setpriv`` that knows ``--pdeathsig``; None without one (asked once)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if done.returncode == 0 else None


def executable(name: str, cwd: str | None, env: dict[str, str] | None) -> str | None:
    """The file the subprocess module would execute for ``name`` (an executable regular file),
    searched as it does: a name with a slash from ``cwd``, any other along the tool's PATH."""
    if os.sep in name:
        candidates = [os.path.join(cwd, name) if cwd else name]
    else:
        candidates = [
            os.path.join(cwd, directory, name) if cwd else os.path.join(directory, name)
            for directory in os.get_exec_path(env)
        ]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def runs_directly(path: str) -> bool:
    """Does the kernel execute this file itself (no shell needed)?"""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head.startswith(_DIRECT_MAGIC)


def launch(
    argv: list[str], cwd: str | None, env: dict[str, str] | None
) -> tuple[list[str], Callable[[], None] | None]:
    """The argv to start and the ``preexec_fn`` to start it with, so that the tool dies with
    the runner: through setpriv (no preexec_fn: vfork) where that is safe, else as before."""
    wrapper = setpriv()
    if wrapper is not None:
        path = executable(argv[0], cwd, env)
        if path is not None and runs_directly(path):
            # The tool's own argv[0], found again by setpriv along the same PATH.
            return [wrapper, "--pdeathsig", "KILL", "--", *argv], None
    return argv, die_with_runner
