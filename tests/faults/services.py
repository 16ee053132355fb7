"""Service processes of a fault test's cluster: ``python -m jobrunner.cli <service>``, each
runner on a host name of its own when the machine allows it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from jobrunner.common import deathsignal
from tests.tools.runners import REPO

# A service that exited on its own is started again after this long (the supervisor's first delay).
RESTART_DELAY = 0.5


def can_name_hosts() -> bool:
    """Whether a child can get a host name of its own (a UTS namespace: needs root)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "hostname", "jobrunner-probe"], capture_output=True, check=False
    )
    return probe.returncode == 0


# Runners on "machines" of their own: a runner that sees a lease of its own host may end the
# tool of a dead runner there itself, which would hide what a runner on another machine must
# do (stop its own tool in time). Without root they share this host, and the summary says so.
SEPARATE_HOSTS = can_name_hosts()


class Service:
    """One service process; ``wanted`` says whether the watchdog should keep it running."""

    def __init__(
        self,
        name: str,
        command: str,
        env: dict[str, str],
        log_file: Path,
        hostname: str | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_file = log_file
        self.hostname = hostname
        self.proc: subprocess.Popen[bytes] | None = None
        self.wanted = False
        self.crashes = 0

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "jobrunner.cli", self.command]
        if self.hostname:
            # sh execs the service: its pid stays the one we signal.
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]
            argv += [sys.executable, "-m", "jobrunner.cli", self.command]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Dies with the test process (the signal survives unshare's and sh's execs): a
                # test process killed, or one whose clean-up never ran (a timeout striking in
                # the middle of a setup), used to leave the service running for hours.
                preexec_fn=deathsignal.die_with_runner,
            )
        self.wanted = True

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_count(self, text: str) -> int:
        try:
            return self.log_file.read_bytes().count(text.encode())
        except FileNotFoundError:
            return 0

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean-up of any kind. The watchdog leaves it down."""
        self.wanted = False
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        self.wanted = False
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
