"""What `jobrunner up` checks before it starts anything, so that a first start cannot half-fail.

Each check either passes or raises :class:`SettingsError` with one sentence that names the
problem and the fix; ``main`` prints it as one line (never a traceback) and nothing was started.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from jobrunner.common.jobtypes import JobType
from jobrunner.common.settings import Settings, SettingsError

# The layout of a state directory (what files it holds and what they mean). Raised when a change
# makes an older jobrunner unable to use a directory this one wrote.
STATE_FORMAT = 1
STATE_FILE = "state-format.json"


def check_port_free(host: str, port: int) -> None:
    """Refuse a port someone already listens on, before the servers start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like uvicorn, allow a port in TIME_WAIT (a jobrunner that just stopped).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"port {port} on {host} is already in use (another jobrunner, or another "
                    f"program): stop it, or choose another port with --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SettingsError(
                    f"{host} is no address of this machine: choose another with --host "
                    f"(127.0.0.1 for this machine only)"
                ) from None
            raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def check_state_dir(state: Path, version: str) -> None:
    """Create the state directory, or refuse one written by a newer jobrunner."""
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"cannot create the state directory {state}: {exc.strerror}; "
            f"choose another with --state-dir"
        ) from None
    marker = state / STATE_FILE
    try:
        written = json.loads(marker.read_text())
        found = int(written["state_format"])
    except FileNotFoundError:
        found = None
    except (OSError, ValueError, KeyError, TypeError):
        raise SettingsError(
            f"{marker} is damaged: delete it if this state directory was made by this "
            f"jobrunner ({version}), or choose another with --state-dir"
        ) from None
    if found is not None and found > STATE_FORMAT:
        raise SettingsError(
            f"the state directory {state} was written by a newer jobrunner "
            f"({written.get('jobrunner', '?')}, state format {found}; this is {version}, "
            f"format {STATE_FORMAT}): run that version, or choose another --state-dir"
        )
    if found != STATE_FORMAT:
        try:
            marker.write_text(json.dumps({"state_format": STATE_FORMAT, "jobrunner": version}))
        except OSError as exc:
            raise SettingsError(
                f"cannot write to the state directory {state}: {exc.strerror}; "
                f"choose another with --state-dir"
            ) from None


def missing_tools(job_types: dict[str, JobType]) -> list[str]:
    """One sentence per job type whose program cannot be found (its jobs would fail to start).

    Not fatal: the other types work, and the tool may be installed while jobrunner runs."""
    problems = []
    for job_type in job_types.values():
        if not job_type.argv or job_type.argv[0] == "{python}":
            continue
        program = os.path.expandvars(job_type.argv[0])
        if "/" in program:
            base = Path(job_type.cwd or ".") / program
            found = base.is_file() and os.access(base, os.X_OK)
        else:
            found = shutil.which(program) is not None
        if not found:
            problems.append(
                f"job type {job_type.name!r}: its program {program!r} is not found or not "
                f"executable{'' if '/' in program else ' on PATH'}; its jobs will fail "
                f"(SPAWN_FAILED) until it is installed or the job types file is fixed"
            )
    return problems


UP_LOCK = "up.lock"
# The claim on the state directory, held (by its open file) for as long as this process lives.
_claims: list[int] = []


def claim_state_dir(state: Path) -> None:
    """Refuse a state directory another `jobrunner up` runs on. Without this the second one
    started a NATS server on the first one's store and then stopped with Postgres's own log
    ("lock file postmaster.pid already exists"). An flock, not a pid file: the kernel drops it
    with its process however that ends (SIGKILL included), so no stale claim is left behind."""
    fd = os.open(state / UP_LOCK, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        try:
            at = f" (its API at {json.loads((state / 'runtime.json').read_text())['api_url']})"
        except (OSError, ValueError, KeyError, TypeError):
            at = ""
        raise SettingsError(
            f"another `jobrunner up` runs on the state directory {state}{at}: use that one, "
            "stop it first, or give this one its own --state-dir"
        ) from None
    _claims.append(fd)


def preflight(settings: Settings, state: Path, version: str) -> dict[str, JobType]:
    """Every check of a first start; returns the job types (loaded once, checked)."""
    from jobrunner.common.jobtypes import load_job_types

    check_port_free(settings.host, settings.port)
    check_state_dir(state, version)
    claim_state_dir(state)
    # A job types file with an error stops the start here (JobTypeConfigError, one line) rather
    # than in a service that the supervisor would restart forever.
    return load_job_types(settings.job_types_file)
