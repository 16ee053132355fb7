"""A first start that cannot go wrong: `jobrunner up` in a bad situation says one sentence and
starts nothing; run as root with a private state directory, it works."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.serverprocess import ServerStartError

ROOT_WITH_POSTGRES_USER = os.geteuid() == 0 and any(p.pw_name == "postgres" for p in pwd.getpwall())


def up(
    state_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "jobrunner.cli", "up", "--state-dir", str(state_dir), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_sentence(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith("jobrunner: "), message
    for text in expected:
        assert text in message


def nothing_started(state_dir: Path) -> bool:
    return not (state_dir / "nats").exists() and not (state_dir / "postgres").exists()


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory as `mktemp -d` makes it: mode 0700, owned by whoever runs the tests."""
    path = Path(tempfile.mkdtemp(prefix="jobrunner-first-start-"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def test_a_job_types_file_with_an_error_stops_the_start(private_dir: Path) -> None:
    """A broken job types file is one sentence naming the file, before any server starts."""
    broken = private_dir / "types.toml"
    broken.write_text("[job_types.x\nargv = 1\n")
    result = up(private_dir / "state", env={"JOBRUNNER_JOB_TYPES_FILE": str(broken)})
    assert_one_sentence(result, str(broken), "not valid TOML")
    assert nothing_started(private_dir / "state")


def test_a_port_in_use_stops_the_start(private_dir: Path) -> None:
    """A port another program listens on is one sentence naming the port and --port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = up(private_dir / "state", "--port", str(port))
    assert_one_sentence(result, f"port {port}", "--port")
    assert nothing_started(private_dir / "state")


def test_a_state_dir_of_a_newer_version_stops_the_start(private_dir: Path) -> None:
    """A state directory a newer jobrunner wrote is refused with that version named."""
    state = private_dir / "state"
    state.mkdir()
    (state / "state-format.json").write_text('{"state_format": 99, "jobrunner": "99.0"}')
    result = up(state)
    assert_one_sentence(result, "newer jobrunner (99.0")
    assert nothing_started(state)


UP = [sys.executable, "-m", "jobrunner.cli", "up"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_state_dir_another_up_runs_on_stops_the_start(private_dir: Path) -> None:
    """A second `jobrunner up` on the state directory of a running one (another port) is one
    sentence naming the directory, the first one's address and --state-dir; it started a NATS
    server on the first one's store and then failed with Postgres's "postmaster.pid" log."""
    private_dir.chmod(0o711)  # Postgres, run as 'postgres' under root, passes through
    state = private_dir / "state"
    first_port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    first = subprocess.Popen(
        [*UP, "--no-auth", "--state-dir", str(state), "--port", str(first_port)],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:  # bounded by the first one's own up_ready_timeout_seconds
            if "jobrunner is running at" in line:
                break
        else:
            pytest.fail(f"the first jobrunner up ended with {first.wait()}")
        result = up(state, "--no-auth", "--port", str(free_port()))
        assert_one_sentence(
            result, f"state directory {state}", f"http://127.0.0.1:{first_port}", "--state-dir"
        )
        assert first.poll() is None  # the first one is untouched
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)


@pytest.mark.skipif(not ROOT_WITH_POSTGRES_USER, reason="needs root and a 'postgres' user")
def test_postgres_starts_in_a_private_state_dir_as_root(private_dir: Path) -> None:
    """Run as root in a 0700 state directory, Postgres (as 'postgres') starts and answers."""
    assert private_dir.stat().st_mode & 0o777 == 0o700
    postgres = EmbeddedPostgres(private_dir / "postgres" / "data")
    try:
        postgres.start()
        assert postgres.url.startswith("postgresql://")
    finally:
        postgres.stop()
    # Passable for Postgres, still unreadable for others: only the search bit was added.
    assert private_dir.stat().st_mode & 0o777 == 0o701


@pytest.mark.skipif(not ROOT_WITH_POSTGRES_USER, reason="needs root and a 'postgres' user")
def test_a_closed_directory_above_the_state_dir_is_named(private_dir: Path) -> None:
    """A directory above the state directory that 'postgres' cannot pass is named, with fixes."""
    state = private_dir / "state"
    state.mkdir()
    postgres = EmbeddedPostgres(state / "postgres" / "data")
    with pytest.raises(ServerStartError, match=rf"cannot pass through {private_dir} \(mode 700\)"):
        postgres.start()
    assert private_dir.stat().st_mode & 0o777 == 0o700  # not ours: left as it was
