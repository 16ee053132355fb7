"""``jobrunner up`` as a child process, as a user starts it: its output collected as it runs, and
the lines a test waits for in it (the URL, the admin token printed at the first start)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from jobrunner.embedded import processtree

URL_RE = re.compile(r"jobrunner is running at (http://\S+)/jobs")
TOKEN_RE = re.compile(r"^\s{4}(\S{20,})\s*$", re.MULTILINE)


class Up:
    """A `jobrunner up` child process whose output is collected as it runs."""

    def __init__(self, state_dir: Path, port: int, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
        env["JOBRUNNER_DEMO_PACE"] = "0"
        env.update({f"JOBRUNNER_{name.upper()}": value for name, value in settings.items()})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobrunner.cli",
                "up",
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.output = ""
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.output += line
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 120) -> re.Match[str]:
        with self._changed:
            self._changed.wait_for(
                lambda: pattern.search(self.output) or self.proc.poll() is not None, timeout
            )
            match = pattern.search(self.output)
        assert match, f"`jobrunner up` did not get there:\n{self.output}"
        return match

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


# The program each embedded server of `jobrunner up` runs, by the name `up` logs it under.
SERVER_PROGRAMS = {"nats-server": b"nats-server", "postgres": b"postgres"}


def server_pid(up_pid: int, server: str) -> int:
    """The pid of the embedded ``server`` (a name of ``SERVER_PROGRAMS``) `jobrunner up`
    (``up_pid``) started."""
    for pid in processtree.children_of(up_pid):
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue  # gone meanwhile
        if program.endswith(b"/" + SERVER_PROGRAMS[server]):
            return pid
    raise AssertionError(f"`jobrunner up` ({up_pid}) runs no {server}")


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (our servers name their dirs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def services_of(up_pid: int) -> dict[str, str]:
    """The pid of each service `jobrunner up` (``up_pid``) started, by service name."""
    found: dict[str, str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == up_pid and b"jobrunner.cli" in argv:
            found[argv[-1].decode()] = pid
    return found


def restarted(up_pid: int, name: str, old_pid: str, within: float = 120) -> str | None:
    """The pid of ``name``'s new process once `jobrunner up` (``up_pid``) has restarted it in
    place of ``old_pid``, within ``within`` s; None if it has not by then."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = services_of(up_pid).get(name)
        if pid is not None and pid != old_pid:
            return pid
        time.sleep(0.1)
    return None


def run_a_job(base_url: str, token: str | None) -> str:
    """Run the default types' internal job to its end through the API at ``base_url``, following
    its stream; its id."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        created = client.post("/api/jobs", json={"job_type": "blacklist_sync"})
        assert created.status_code == 201, created.text
        job_id = str(created.json()["id"])
        with client.stream("GET", f"/jobs/stream/{job_id}") as stream:
            body = "".join(stream.iter_text())
    assert "event: done" in body
    assert '"status":"completed"' in body
    return job_id
