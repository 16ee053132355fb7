"""Test and benchmark runs leave no state behind, even when a run was killed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from jobrunner.embedded.scratch import OWNER_FILE, new_scratch_dir, scratch_dir, sweep_stale


def test_a_scratch_directory_is_removed_with_its_contents() -> None:
    with scratch_dir("jobrunner-scratch-test-") as directory:
        (directory / "data").mkdir()
        (directory / "data" / "big").write_bytes(b"x" * 1024)
    assert not directory.exists()


def test_the_directory_of_a_killed_run_is_swept_by_the_next_one() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = new_scratch_dir("jobrunner-scratch-test-")
    (orphan / OWNER_FILE).write_text(dead.stdout.strip())
    alive = new_scratch_dir("jobrunner-scratch-test-")
    try:
        sweep_stale("jobrunner-scratch-test-")
        assert not orphan.exists()
        assert alive.exists(), "a directory whose owner still runs is left alone"
    finally:
        sweep_stale("jobrunner-scratch-test-")
        shutil.rmtree(alive, ignore_errors=True)


def test_a_server_left_running_by_a_killed_run_is_stopped_by_the_next_one() -> None:
    orphan = new_scratch_dir("jobrunner-scratch-test-")
    (orphan / OWNER_FILE).write_text("999999999")  # no such process
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"{orphan}/store"],
        start_new_session=True,
    )
    try:
        cmdline = Path(f"/proc/{server.pid}/cmdline")
        for _ in range(500):  # until the child has exec'd and shows its command line
            if str(orphan).encode() in cmdline.read_bytes():
                break
            time.sleep(0.01)
        sweep_stale("jobrunner-scratch-test-")
        assert server.wait(timeout=10) != 0
        assert not orphan.exists()
    finally:
        server.kill()


def test_a_service_configured_into_a_killed_runs_directory_is_stopped_by_the_next_one() -> None:
    """A service process whose environment (not its command line) points into a killed run's
    directory is stopped with it: a fault test's runner or API does not outlive its run."""
    orphan = new_scratch_dir("jobrunner-scratch-test-")
    (orphan / OWNER_FILE).write_text("999999999")  # no such process
    service = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={"JOBRUNNER_STATE_DIR": f"{orphan}/state"},
        start_new_session=True,
    )
    try:
        environ = Path(f"/proc/{service.pid}/environ")
        for _ in range(500):  # until the child has exec'd with its environment
            if str(orphan).encode() in environ.read_bytes():
                break
            time.sleep(0.01)
        sweep_stale("jobrunner-scratch-test-")
        assert service.wait(timeout=10) != 0
        assert not orphan.exists()
    finally:
        service.kill()
