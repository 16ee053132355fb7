"""The guardian's own program: kills a dead runner's tools (see guardian.py).

Run as ``python -I -S guardian_main.py <tag inode> <token>`` with the runner's pipe as stdin. It
imports nothing of jobrunner (nor anything outside the standard library's core): it starts in
a few milliseconds and holds a few MB. The runner writes ``+<pgid> <start ticks>`` for every
tool it started and ``-<pgid> <start ticks>`` once the tool's group is killed. At the pipe's end
of file (the runner died, SIGKILL included, or exited) every group still written down is killed,
and so is every process holding the runner's tag: the pipe ``pipe:[<tag inode>]`` each tool
inherits (and every spawn holds from its clone to its exec) or the ``JOBRUNNER_GUARDIAN=<token>``
of each tool's environment (which a tool cannot close). Then the guardian exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

MARKER = "JOBRUNNER_GUARDIAN"
# Killed processes leave /proc a moment after their SIGKILL: scans are repeated until one finds
# nothing of ours alive (a tool's fork between two scans is found by the next), this long at most.
SCAN_PAUSE = 0.02
SCAN_ROUNDS = 250


def _stat(pid: str) -> tuple[str, int, int] | None:
    """A process's state, process group and start ticks (as orphans.py reads them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])


def _holds_tag(pid: str, tag: str, marker: bytes) -> bool:
    """Does the process hold the tag pipe open, or carry the token in its environment?"""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == tag:
                    return True
            except OSError:
                continue
        with open(f"/proc/{pid}/environ", "rb") as file:
            return marker in b"\0" + file.read()
    except OSError:
        return False  # gone, or not ours to read


def _scan(groups: dict[int, int], tag: str, marker: bytes) -> int:
    """SIGKILL what is ours of every live process; returns how many were hit."""
    me = str(os.getpid())
    hit = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        _, pgid, started = stat
        # A registered group (as orphans.kill_group): its leader, the very process (its start
        # ticks), or members started after it while no other process has the leader's pid.
        leader_started = groups.get(pgid)
        if leader_started is None:
            ours = False
        elif pgid == int(pid):
            ours = started == leader_started
        else:
            leader = _stat(str(pgid))
            ours = started >= leader_started and (leader is None or leader[2] == leader_started)
        if ours or _holds_tag(pid, tag, marker):
            if pgid == int(pid):
                # A tool not written down (yet): its group goes too, at the next scan.
                groups[pgid] = started
            try:
                os.kill(int(pid), signal.SIGKILL)
                hit += 1
            except OSError:
                pass
    return hit


def main() -> None:
    tag = f"pipe:[{sys.argv[1]}]"
    marker = f"\0{MARKER}={sys.argv[2]}\0".encode()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: dict[int, int] = {}
    pending = b""
    while chunk := os.read(0, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            pgid, started = line[1:].split()
            if line.startswith(b"+"):
                groups[int(pgid)] = int(started)
            elif groups.get(int(pgid)) == int(started):
                del groups[int(pgid)]
    for _ in range(SCAN_ROUNDS):
        if not _scan(groups, tag, marker):
            break
        time.sleep(SCAN_PAUSE)


if __name__ == "__main__":
    main()
