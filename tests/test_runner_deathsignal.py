"""A tool dies with its runner however it was started (deathsignal.py): a runner SIGKILLed
leaves no tool running, through setpriv and through the preexec_fn alike."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from jobrunner.services.runner import deathsignal
from jobrunner.services.runner.process import SpawnError, ToolProcess
from tests.tools.runners import pid_alive, wait_dead

# Stands in for a runner: starts ``sleep`` as the runner does and says how, then waits.
FAKE_RUNNER = """
import asyncio, sys
from jobrunner.services.runner import deathsignal
from jobrunner.services.runner.process import ToolProcess

async def main() -> None:
    if sys.argv[1] == "preexec":
        deathsignal.setpriv = lambda: None
    tool = ToolProcess(["sleep", "60"], None, None)
    await tool.start()
    argv, _ = deathsignal.launch(tool.argv, None, None)
    print(tool.pid, argv[0], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def _tool_of_killed_runner(how: str) -> tuple[int, str]:
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FAKE_RUNNER, how, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert runner.stdout is not None
        pid, started_with = (await asyncio.wait_for(runner.stdout.readline(), 30)).split()
        assert pid_alive(int(pid))
    finally:
        runner.send_signal(signal.SIGKILL)
        await runner.wait()
    return int(pid), started_with.decode()


@pytest.mark.skipif(deathsignal.setpriv() is None, reason="no setpriv with --pdeathsig here")
async def test_tool_started_through_setpriv_dies_with_its_runner() -> None:
    """SIGKILL the runner of a tool started through setpriv: the tool dies at once."""
    pid, started_with = await _tool_of_killed_runner("setpriv")
    assert os.path.basename(started_with) == "setpriv"
    await wait_dead(pid)


async def test_tool_started_with_preexec_fn_dies_with_its_runner() -> None:
    """Without setpriv (the tool started as before): the tool dies with its runner too."""
    pid, started_with = await _tool_of_killed_runner("preexec")
    assert started_with == "sleep"
    await wait_dead(pid)


async def test_a_file_that_only_looks_like_a_binary_fails_to_start_and_never_reaches_a_shell(
    tmp_path: Path,
) -> None:
    """A tool file that begins like an ELF binary for another machine: the kernel refuses it,
    and the job's start fails with the reason instead of /bin/sh running the file as a script
    (what setpriv's execvp does with a file the kernel refuses)."""
    marker = tmp_path / "ran-through-a-shell"
    header = bytearray(Path("/proc/self/exe").read_bytes()[:64])
    header[18] ^= 0x5A  # another e_machine
    fake = tmp_path / "fake-tool"
    fake.write_bytes(bytes(header) + f"\ntouch {marker}\n".encode())
    fake.chmod(0o755)
    tool = ToolProcess([str(fake)], None, None)
    with pytest.raises(SpawnError, match="Exec format error"):
        await tool.start()
    await asyncio.sleep(0.5)  # what a shell would have needed to run the file
    assert not marker.exists()
