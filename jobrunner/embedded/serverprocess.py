"""Start a server binary, wait for the line that says it is ready, stop it cleanly."""

from __future__ import annotations

import grp
import os
import pwd
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobrunner.common import deathsignal


class ServerStartError(Exception):
    pass


# Below the kernel's ephemeral range (Linux: 32768-60999), where outgoing connections take
# their local ports: a server stopped and started again on its port (a test's NATS restart, a
# state directory's fixed port) cannot find the port taken by some client meanwhile, and
# parallel test workers picking ports at random rarely meet.
_PORTS_FROM = 10_000
_PORT_TRIES = 50
# Ports at or above _PORTS_FROM that browsers refuse to open (the Fetch standard's "bad ports":
# Chromium answers ERR_UNSAFE_PORT): a server chosen one there could not be opened in a browser.
_BROWSER_REFUSED = frozenset({10080})


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 nobody uses now, chosen at random below the ephemeral range when
    the kernel says where that is (else any port the kernel hands out)."""
    below = _ephemeral_start()
    if below - _PORTS_FROM >= 1000:
        for _ in range(_PORT_TRIES):
            port = random.randrange(_PORTS_FROM, below)
            if port not in _BROWSER_REFUSED and _bindable(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bind_free_port(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready socket bound on ``host`` to a port ``free_port()`` chose: bound here,
    so that no other process (another test worker) can take the port between the choice and
    the bind; a port taken in that moment means another port."""
    for _ in range(_PORT_TRIES):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, free_port()))
        except OSError:
            listener.close()
            continue
        return listener
    raise OSError(f"no free port on {host} after {_PORT_TRIES} tries")


# What nats-server ("bind: address already in use") and Postgres ("Address already in use")
# print when their port was taken.
_PORT_TAKEN = "address already in use"


class ServerProcess:
    """A child server whose combined output goes to a log file, read until ``ready_text``.

    ``port_flag`` names the argument followed by the port when the port was chosen here (by
    ``free_port()``) rather than given: another process may take a free port before the server
    binds it, and the start then tries another port (``self.port``), as a port given by a user
    or needed again by a restart must not change."""

    port: int  # set by each server before this class's __init__

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_file: Path,
        ready_text: str,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
        port_flag: str | None = None,
        env: dict[str, str] | None = None,
        write_error_text: str | None = None,
    ) -> None:
        self.name = name
        # A line of the server's output (lower case) saying it could not write its data; seen
        # since its last start: ``write_failed``, and the first such line in ``write_error``
        # (the keeper acts on it: its error tells a full disk from other failures).
        self.write_error_text = write_error_text
        self.write_failed = threading.Event()
        self.write_error: str | None = None
        self.env = env
        self.argv = list(argv)
        self.log_file = log_file
        self.ready_text = ready_text
        self.stop_signal = stop_signal
        self.user = user
        self.port_flag = port_flag
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        for _ in range(_PORT_TRIES if self.port_flag else 1):
            try:
                self._start_once(timeout)
                return
            except ServerStartError as error:
                if not self.port_flag or _PORT_TAKEN not in str(error).lower():
                    raise
                self._move_port(free_port())
        raise ServerStartError(f"{self.name} found no free port in {_PORT_TRIES} tries")

    def _move_port(self, port: int) -> None:
        assert self.port_flag is not None
        self.argv[self.argv.index(self.port_flag) + 1] = str(port)
        self.port = port

    def _start_once(self, timeout: float) -> None:
        ready = threading.Event()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # The server dies with us (a SIGKILLed `jobrunner up` or test process would leave it
        # running otherwise), as a runner's tool does: the parent-death signal, set in the
        # server's own process after the user switch (setpriv execs as that user, a
        # preexec_fn runs after it). The kernel sends it when the *thread* that started the
        # server ends: the main thread, or an event loop's worker thread, which lives as long
        # as its loop.
        argv, die_with_us = deathsignal.launch(self.argv, None, self.env)
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **as_user(self.user),
            # Own process group: Ctrl-C in a terminal reaches the supervisor, which stops us
            # in order, instead of killing every server at once.
            start_new_session=True,
            preexec_fn=die_with_us,
        )
        assert self.proc.stdout is not None
        out = self.proc.stdout
        tail: list[str] = []

        self.write_failed.clear()
        self.write_error = None
        failing_text = self.write_error_text.encode() if self.write_error_text else None

        def pump() -> None:
            with self.log_file.open("ab") as f:
                for line in out:
                    f.write(line)
                    f.flush()
                    if failing_text is not None and failing_text in line.lower():
                        if self.write_error is None:  # set before the event: read after it
                            self.write_error = line.decode(errors="replace").strip()
                        self.write_failed.set()
                    if not ready.is_set():
                        tail.append(line.decode(errors="replace").rstrip())
                        del tail[:-20]
                        if self.ready_text.encode() in line:
                            ready.set()

        pumping = threading.Thread(target=pump, name=f"{self.name}-output", daemon=True)
        pumping.start()
        deadline_hit = (
            not ready.wait(timeout) if self._alive_while_waiting(ready, timeout) else True
        )
        if deadline_hit or not ready.is_set():
            self.stop()
            # The server's last words (why it exited: a port taken, say) are read to the end.
            pumping.join(5.0)
            raise ServerStartError(
                f"{self.name} did not start (see {self.log_file}):\n" + "\n".join(tail[-10:])
            )

    def _alive_while_waiting(self, ready: threading.Event, timeout: float) -> bool:
        # Wake early when the process dies instead of waiting out the whole timeout.
        assert self.proc is not None
        step = 0.05
        waited = 0.0
        while waited < timeout:
            if ready.wait(step):
                return True
            if self.proc.poll() is not None:
                return False
            waited += step
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(self.stop_signal)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Hard stop, as a crash would (tests use it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess options that run a child as ``user`` with that user's own groups.

    ``user=`` alone changes the uid but keeps our groups: run as root, the child would still be
    in group root, and a root-group directory's group bits (not the "others" bits) would decide
    what it may reach."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem and g.gr_gid != entry.pw_gid]
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}
