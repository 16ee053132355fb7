"""A tool dies with its runner: the kernel's parent-death signal (Linux), set in the tool's own
process before the tool runs. (``jobrunner up`` starts its embedded NATS and Postgres the same
way, so a SIGKILLed ``up`` leaves no server behind: hence it lives in ``common``.)

Set from Python (a ``preexec_fn``), it makes the subprocess module fork() the whole runner instead
of using vfork(): copying the runner's page tables was most of a job's dispatch (about 5 ms on an
idle machine, 30 ms under load, where vfork takes under 1 ms). So where util-linux's ``setpriv``
is installed, a tool is started through it: ``setpriv --pdeathsig KILL -- tool ...`` sets the
signal and execs the tool in the same process (same pid, same process group; the signal survives
the exec).

setpriv execs with ``execvp``, which hands a file the kernel refuses (ENOEXEC) to ``/bin/sh``: only
what the kernel will run goes through setpriv: an ELF binary for this machine (the class, byte
order, type and machine the kernel checks, as the runner's own interpreter has them: a binary for
another machine or a file that only starts like one is refused), or a ``#!`` script whose
interpreter is such a file in turn. Anything else, a tool that cannot be found
(its SPAWN_FAILED keeps the reason the subprocess module gives), and a machine without setpriv
start the way they always did, with the ``preexec_fn``: a tool never runs through a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Literal

_PR_SET_PDEATHSIG = 1
_ELF_MAGIC = b"\x7fELF"
_ELF_RUNNABLE_TYPES = (2, 3)  # ET_EXEC, ET_DYN
# The kernel reads this much of a file to decide how to run it (BINPRM_BUF_SIZE): a #! line
# longer than that is refused.
_HEAD_BYTES = 256
# How many #! interpreters deep the kernel follows (its binfmt recursion limit is 4 or more).
_SCRIPT_DEPTH = 4


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


async def probe() -> None:
    """Ask for setpriv (a process started and waited for) off the event loop; once."""
    if setpriv.cache_info().currsize == 0:
        await asyncio.to_thread(setpriv)


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


def runs_directly(path: str, depth: int = _SCRIPT_DEPTH) -> bool:
    """Does the kernel execute this file itself, never refusing it with ENOEXEC (which would
    make setpriv's execvp hand it to a shell)?"""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return False
    if head.startswith(_ELF_MAGIC):
        return _elf_identity(head) == _own_elf_identity()
    if head.startswith(b"#!") and depth > 0:
        interpreter = _interpreter(head)
        return (
            interpreter is not None
            and os.path.isfile(interpreter)
            and os.access(interpreter, os.X_OK)
            and runs_directly(interpreter, depth - 1)
        )
    return False


def _elf_identity(head: bytes) -> tuple[int, int, int] | None:
    """An ELF header's class, byte order and machine; None unless the kernel could run it as
    an executable or shared object (the type) and the header is whole."""
    if len(head) < 20 or head[5] not in (1, 2):
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    if int.from_bytes(head[16:18], order) not in _ELF_RUNNABLE_TYPES:
        return None
    return head[4], head[5], int.from_bytes(head[18:20], order)


@functools.cache
def _own_elf_identity() -> tuple[int, int, int] | None:
    """What this machine's kernel runs: the identity of the runner's own interpreter."""
    try:
        with open("/proc/self/exe", "rb") as file:
            return _elf_identity(file.read(_HEAD_BYTES))
    except OSError:
        return None


def _interpreter(head: bytes) -> str | None:
    """The absolute path a ``#!`` line names, when the kernel reads the whole of it."""
    line, newline, _ = head[2:].partition(b"\n")
    if not newline:
        return None  # longer than the kernel reads: refused
    name = line.strip(b" \t").split(None, 1)
    if not name or not name[0].startswith(b"/"):
        return None
    return os.fsdecode(name[0])


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
