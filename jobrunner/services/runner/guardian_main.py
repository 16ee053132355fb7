"""The guardian's own program: kills a dead runner's tools (see guardian.py).

Run as ``python -I -S guardian_main.py <token>`` with the runner's pipe as stdin. It imports
nothing of jobrunner (nor anything outside the standard library's core): it starts in a few
milliseconds and holds a few MB. The runner writes ``s<serial>`` before each spawn beside the
guardian, ``+<serial> <pgid> <start ticks>`` once the tool runs, and ``-<serial>`` once the
tool's group is killed. ``d<serial> <deadline>`` (a CLOCK_MONOTONIC time, ``time.monotonic()``:
one clock for every process of the host) says until when the tool's job surely holds its slot
lease; once it passes with no later one written, the tool's group is SIGKILLed, with the same
checks against pid reuse, while the runner lives (stalled: stopped, frozen or its event loop
blocked past its lease), so that no other runner starts the lock's next job beside it. The
guardian sleeps in ``poll`` until its pipe is readable or the nearest deadline comes. At the
pipe's end of file (the runner died, SIGKILL included, or exited)
every group still written down is killed, and so is every process of a live tool found by the
runner's token: ``JOBRUNNER_GUARDIAN=<token>.<serial>`` in its environment (which a process
cannot close) for a serial not yet ended, or, without the token, the runner's tag (the memfd
named for the token each tool inherits and every spawn holds from its clone to its exec). A
process whose token names an ended tool escaped its group (a detached descendant) and is
spared; so are the guardian and its parent. Then the guardian exits.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # (typing itself is not imported: the guardian starts in milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable

MARKER = "JOBRUNNER_GUARDIAN"
# Killed processes leave /proc a moment after their SIGKILL: scans are repeated until one finds
# nothing of ours alive (a tool's fork between two scans is found by the next), this long at most.
SCAN_PAUSE = 0.02
SCAN_ROUNDS = 250
# The longest one poll sleeps towards a deadline: its timeout is a C int of milliseconds (24.8
# days), and a deadline further off (a lease TTL of a month: any above zero is accepted) made it
# raise OverflowError, ending the guardian, and every guardian started in its place, at once.
LONGEST_WAIT = 3600.0


def tag_name(token: str) -> str:
    """The name of the runner's tag, a memfd: the token makes it the runner's alone."""
    return f"jobrunner-guardian-{token}"


def _stat(pid: str) -> tuple[str, int, int] | None:
    """A process's state, process group and start ticks (as orphans.py reads them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])


def _claimed(pid: str, tag: str, token: bytes, live: set[int]) -> bool:
    """Is the process a live tool's, by the token in its environment or else by the tag?

    A token names its tool's serial: a process whose tool ended (a detached descendant that
    escaped its group before the runner killed the group) is spared. A process without the token
    (before its exec, or started with another environment) is the runner's if it holds the tag.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = b"\0" + file.read()
        at = environ.find(token)
        if at >= 0:
            serial = environ[at + len(token) :].split(b"\0", 1)[0]
            return not serial.isdigit() or int(serial) in live
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == tag:
                    return True
            except OSError:
                continue
    except OSError:
        pass  # gone, or not ours to read
    return False


def _in_group(pid: str, pgid: int, started: int, groups: dict[int, int]) -> bool:
    """Is the process (``pgid`` and ``started`` from its stat) of a written group? Its leader, the
    very process (its start ticks), or a member started after it while no other process has the
    leader's pid (as orphans.kill_group)."""
    leader_started = groups.get(pgid)
    if leader_started is None:
        return False
    if pgid == int(pid):
        return started == leader_started
    leader = _stat(str(pgid))
    return started >= leader_started and (leader is None or leader[2] == leader_started)


class Deadlines:
    """Until when each tool's job holds its lease, and when the guardian must look next.

    A ``d`` line comes with every lease renewal of every job: a pass over all deadlines at each
    (as before) made the guardian's work per line grow with the jobs running, quadratic in all.
    ``nearest`` is kept instead as a bound never later than the nearest deadline of a started
    tool (None only when there is none): a deadline written or a tool started can only lower
    it, and one raised (a renewal) or dropped leaves it early, so the guardian wakes early, once,
    and the full pass it then makes finds nothing due and sets it exactly.

    A ``+`` after the tool's ``d`` lines is handled (``started``) defensively: the runner writes
    a tool's ``+`` before any of its ``d`` lines, but the bound must hold whatever the order.
    """

    def __init__(self, tools: dict[int, tuple[int, int] | None]) -> None:
        self._tools = tools  # by serial, the tools' groups (None before the tool's ``+``)
        self._at: dict[int, float] = {}  # by serial: until when the tool's job holds its lease
        self.nearest: float | None = None

    def write(self, serial: int, at: float) -> None:
        """A ``d`` line: counted once the tool is written (``s``), waited for once it runs."""
        if serial in self._tools:
            self._at[serial] = at
            if self._tools[serial]:
                self._lower(at)

    def started(self, serial: int) -> None:
        """The tool's ``+`` line (after its group was written): a deadline it had now counts."""
        at = self._at.get(serial)
        if at is not None and self._tools.get(serial):
            self._lower(at)

    def forget(self, serial: int) -> None:
        self._at.pop(serial, None)

    def due(self, now: float) -> list[int]:
        """The started tools whose deadline passed by ``now``, forgotten (killed once: a deadline
        written later counts again); a full pass only when the nearest may have come."""
        if self.nearest is None or self.nearest > now:
            return []
        due = [serial for serial, at in self._at.items() if at <= now and self._tools.get(serial)]
        for serial in due:
            del self._at[serial]
        waiting = [at for serial, at in self._at.items() if self._tools.get(serial)]
        self.nearest = min(waiting) if waiting else None
        return due

    def _lower(self, at: float) -> None:
        if self.nearest is None or at < self.nearest:
            self.nearest = at


def _expire(tools: dict[int, tuple[int, int] | None], deadlines: Deadlines) -> None:
    """Kill the group of every tool whose deadline passed."""
    due = deadlines.due(time.monotonic())
    if due:
        groups = {group[0]: group[1] for serial in due if (group := tools.get(serial))}
        # These groups alone: the other tools run on, and so does the runner.
        _kill_until_none(groups, lambda pid: False, {str(os.getpid())})


def _scan(groups: dict[int, int], claimed: Callable[[str], bool], spared: set[str]) -> int:
    """SIGKILL every live process but the ``spared`` that is of a written group or ``claimed``;
    returns how many were hit."""
    hit = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in spared:
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        _, pgid, started = stat
        if _in_group(pid, pgid, started, groups) or claimed(pid):
            if pgid == int(pid):
                # A tool not written down (yet): its group goes too, at the next scan.
                groups[pgid] = started
            try:
                os.kill(int(pid), signal.SIGKILL)
                hit += 1
            except OSError:
                pass
    return hit


def _kill_until_none(
    groups: dict[int, int], claimed: Callable[[str], bool], spared: set[str]
) -> None:
    """``_scan`` again until a scan finds nothing alive (a fork between two scans is found by
    the next; killed processes leave /proc a moment after their SIGKILL), SCAN_ROUNDS at most."""
    for _ in range(SCAN_ROUNDS):
        if not _scan(groups, claimed, spared):
            return
        time.sleep(SCAN_PAUSE)


def main() -> None:
    token = sys.argv[1]
    tag = f"/memfd:{tag_name(token)} (deleted)"
    marker = f"\0{MARKER}={token}.".encode()
    # Never the guardian itself, nor the runner (it holds the tag; alive still if its end of
    # the pipe closed for another reason), as long as its pid is not another's.
    parent = os.getppid()
    parent_stat = _stat(str(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tools: dict[int, tuple[int, int] | None] = {}  # by serial, as guardian.py keeps them
    deadlines = Deadlines(tools)
    pending = b""
    pipe = select.poll()
    pipe.register(0, select.POLLIN)
    while True:
        # Asleep until the runner writes or the nearest deadline comes: no polling of the clock.
        wait = None
        if deadlines.nearest is not None:
            left = deadlines.nearest - time.monotonic()
            wait = max(0, math.ceil(min(left, LONGEST_WAIT) * 1000))
        if pipe.poll(wait):
            chunk = os.read(0, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                kind, fields = line[:1], line[1:].split()
                serial = int(fields[0])
                if kind == b"s":
                    tools[serial] = None
                elif kind == b"+":
                    tools[serial] = (int(fields[1]), int(fields[2]))
                    deadlines.started(serial)
                elif kind == b"d":
                    deadlines.write(serial, float(fields[1]))
                else:
                    tools.pop(serial, None)
                    deadlines.forget(serial)
        _expire(tools, deadlines)
    groups = {pgid: started for pgid, started in filter(None, tools.values())}
    live = set(tools)
    spared = {str(os.getpid())}
    now = _stat(str(parent))
    if parent_stat is not None and now is not None and now[2] == parent_stat[2]:
        spared.add(str(parent))
    _kill_until_none(groups, lambda pid: _claimed(pid, tag, marker, live), spared)


if __name__ == "__main__":
    main()
