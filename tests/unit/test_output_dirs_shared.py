"""Runners sharing one work dir (two on a host, one state dir): a runner starting removes the
output directories a killed runner left, never those of jobs still running beside it. Before,
a runner starting while another's job was being set up removed that job's fresh folder, and
the job failed SPAWN_FAILED ("output directory not made")."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from jobrunner.common.settings import Settings
from jobrunner.services.runner import artifacts
from jobrunner.services.runner.artifacts import OutputDirectory

HOLDER = """
import sys, time
from jobrunner.common.settings import Settings
from jobrunner.services.runner.artifacts import OutputDirectory
directory = OutputDirectory.create(Settings(state_dir=sys.argv[1]), "killedjob")
print(directory.root, flush=True)
time.sleep(60)
"""


def test_a_running_jobs_folder_is_kept_and_a_killed_runners_is_removed(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "state"))
    running = OutputDirectory.create(settings, "runningjob")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.state_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        assert artifacts.remove_leftovers(settings) == 0  # both in use: the other runner's too
        assert held.is_dir()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert artifacts.remove_leftovers(settings) == 1  # its lock went with the process
        assert not held.exists()
        assert running.path.is_dir()
    finally:
        holder.kill()
        holder.wait()
        running._remove()
    assert not running.root.exists()
