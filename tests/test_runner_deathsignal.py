"""A tool dies with its runner however it was started: a runner SIGKILLed leaves no tool running,
with its guardian (guardian.py: the tool started directly), through setpriv and through the
preexec_fn alike (deathsignal.py, where no guardian runs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobrunner.common import deathsignal
from jobrunner.services.runner import guardian, process
from jobrunner.services.runner.process import SpawnError, ToolProcess
from tests.tools.runners import REPO, pid_alive, wait_dead

GUARDED_RUNNER = str(REPO / "tests" / "tools" / "guarded_runner.py")

# Stands in for a runner: starts ``sleep`` as the runner does and says how, then waits.
FAKE_RUNNER = """
import asyncio, functools, sys
from jobrunner.common import deathsignal
from jobrunner.services.runner import guardian, process
from jobrunner.services.runner.process import ToolProcess

async def main() -> None:
    if sys.argv[1] == "preexec":
        deathsignal.setpriv = functools.cache(lambda: None)
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


@pytest.fixture(params=["guardian", "setpriv"])
def started(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tools start directly beside a guardian of this test's own, or as without one."""
    guard = guardian.Guardian()
    monkeypatch.setattr(process, "GUARDIAN", guard)
    if request.param == "guardian":
        assert guard.start()
    yield request.param
    guard.stop()  # (the runner's lives as long as the runner)


async def test_a_file_that_only_looks_like_a_binary_fails_to_start_and_never_reaches_a_shell(
    tmp_path: Path, started: str
) -> None:
    """A tool file that begins like an ELF binary for another machine: the kernel refuses it,
    and the job's start fails with the reason instead of /bin/sh running the file as a script
    (what setpriv's execvp does with a file the kernel refuses; the subprocess module's own exec
    of a tool started directly never falls back to a shell)."""
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


# Reopens the tag (its descriptor number the argument) for writing as any tool can, through
# /proc, and tries to write into it, then to grow it: prints what each attempt gave.
WRITES_TAG = """
import os, sys
fd = os.open(f"/proc/self/fd/{sys.argv[1]}", os.O_RDWR)
for attempt in (lambda: os.write(fd, b"from job A"), lambda: os.ftruncate(fd, 1 << 20)):
    try:
        attempt()
        print("written", flush=True)
    except PermissionError:
        print("refused", flush=True)
"""


async def test_a_tool_cannot_write_into_the_runner_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tool holds the runner's tag: one that reopens it for writing through /proc can
    neither write into it (a channel from one job to another) nor grow it (memory the runner
    would hold for good): it is sealed empty."""
    guard = guardian.Guardian()
    monkeypatch.setattr(process, "GUARDIAN", guard)
    try:
        assert guard.start()
        assert guard.tag is not None
        tool = ToolProcess([sys.executable, "-c", WRITES_TAG, str(guard.tag)], None, None)
        await tool.start()
        assert tool.proc is not None
        assert tool.proc.stdout is not None
        assert (await tool.proc.stdout.read()).split() == [b"refused", b"refused"]
        await tool.wait()
        assert os.fstat(guard.tag).st_size == 0
    finally:
        guard.stop()


class GuardedRunner:
    """tests/tools/guarded_runner.py: a runner's guardian and what a mode started."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pids: dict[str, int] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, mode: str, *pids: int, until: str = "ready"
    ) -> AsyncIterator[GuardedRunner]:
        """The runner, killed at the end with all it reported, whatever the test's outcome."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            GUARDED_RUNNER,
            mode,
            *map(str, pids),
            stdin=asyncio.subprocess.PIPE,  # its end ends the runner, should pytest die
            stdout=asyncio.subprocess.PIPE,
        )
        runner = cls(proc)
        try:
            await runner.read_until(until)
            yield runner
        finally:
            await runner.kill()
            for pid in runner.pids.values():
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    async def read_until(self, name: str) -> int:
        """Read the runner's lines up to one that starts with ``name``; returns its pid."""
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode().split()
            assert line, "the runner ended"
            if len(line) == 2 and line[1].isdigit():  # (the runner's log lines go here too)
                self.pids[line[0]] = int(line[1])
            if line[0] == name:
                return self.pids.get(name, 0)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def test_a_tool_and_its_group_die_with_its_runner_through_the_guardian() -> None:
    """The tool started directly (no setpriv, no preexec_fn) and the child it started in its
    group both die when the runner is SIGKILLed, and so does the guardian."""
    async with GuardedRunner.start("group") as runner:
        tool, child, guardian = runner.pids["tool"], runner.pids["child"], runner.pids["guardian"]
        assert Path(f"/proc/{tool}/cmdline").read_bytes().startswith(b"sh\0")  # started directly
        assert pid_alive(child)
        await runner.kill()
        for pid in (tool, child, guardian):
            await wait_dead(pid)


async def test_the_runner_helper_ends_with_its_test_and_takes_its_tools_along() -> None:
    """tests/tools/guarded_runner.py exits at the end of its input (its test's end, pytest
    killed included): nothing it started outlives the test."""
    async with GuardedRunner.start("group") as runner:
        assert runner.proc.stdin is not None
        runner.proc.stdin.close()
        assert await asyncio.wait_for(runner.proc.wait(), 30) == 0
        for name in ("tool", "child", "guardian"):
            await wait_dead(runner.pids[name])


@pytest.mark.parametrize("mode", ["unwritten", "unwritten-closed"])
async def test_a_tool_the_runner_died_before_writing_down_dies_too(mode: str) -> None:
    """A runner killed right after a spawn, before it wrote the group down: the guardian finds
    the tool by the runner's tag it inherited, or (the tag closed at once) by the token in its
    environment, and a child of its group that has neither by the group."""
    async with GuardedRunner.start(mode) as runner:
        family = [pid for name, pid in runner.pids.items() if name in ("tool", "child")]
        assert all(map(pid_alive, family))
        await runner.kill()
        for pid in family:
            await wait_dead(pid)


async def test_a_spawn_the_runner_died_in_the_middle_of_dies_too() -> None:
    """A runner killed while its child is between its clone and its exec: the guardian's pipe
    ends only once the child closed its copy of the runner's end, and the child holds the tag
    from its clone on: it is found however long it takes to exec."""
    async with GuardedRunner.start("before-exec", until="spawn") as runner:
        spawn = runner.pids["spawn"]
        await runner.kill()
        await wait_dead(spawn)


async def test_a_guardian_killed_is_replaced_and_the_tools_stay_guarded() -> None:
    """SIGKILL the guardian: its tools keep running, the runner starts another and writes them
    to it again; the runner SIGKILLed then, they die."""
    async with GuardedRunner.start("group") as runner:
        tool, child, first = runner.pids["tool"], runner.pids["child"], runner.pids["guardian"]
        os.kill(first, signal.SIGKILL)
        second = await runner.read_until("guardian")
        assert second != first  # at once: killed, it is not one that cannot run
        assert pid_alive(tool)
        assert pid_alive(child)
        await runner.kill()
        for pid in (tool, child, second):
            await wait_dead(pid)


async def test_a_guardian_refused_a_moment_is_started_later_and_guards_the_tools() -> None:
    """The guardian killed while a fork is refused (EAGAIN: a full pids cgroup, say): the
    runner tries again later, and the new guardian kills the earlier tool with the runner."""
    async with GuardedRunner.start("refused-once") as runner:
        tool, first = runner.pids["tool"], runner.pids["guardian"]
        os.kill(first, signal.SIGKILL)
        while (second := await runner.read_until("guardian")) == first:
            pass
        assert pid_alive(tool)
        await runner.kill()
        for pid in (tool, second):
            await wait_dead(pid)


async def test_a_guardian_whose_pipe_ends_while_its_runner_lives_spares_the_runner() -> None:
    """The runner's end of the guardian's pipe closed with the runner alive (which holds the
    tag): the guardian kills the tools, never the runner."""
    async with GuardedRunner.start("pipe-lost") as runner:
        await wait_dead(runner.pids["tool"])
        await wait_dead(runner.pids["guardian"])
        await asyncio.sleep(0.5)  # (a guardian that would kill the runner has done so by now)
        assert runner.proc.returncode is None


async def test_a_guardian_refused_its_pidfd_leaves_its_runner_alive() -> None:
    """pidfd_open refused after the guardian started, and its kill late (the runner
    preempted): the guardian is killed before its pipe closes, the runner runs on."""
    async with GuardedRunner.start("pidfd-refused") as runner:
        assert runner.proc.returncode is None
        assert pid_alive(runner.proc.pid)


async def test_a_guardian_stopped_with_a_live_tool_leaves_the_tool_alone() -> None:
    """A guardian replaced while pidfd_open is refused and kills are late (the runner
    preempted): the old guardian and the new one are each killed before their pipe closes (an
    end of file would make them kill the tools), and the live tool runs on."""
    async with GuardedRunner.start("pidfd-refused-later") as runner:
        assert runner.proc.returncode is None
        assert pid_alive(runner.pids["tool"])


async def test_a_process_holding_only_the_tag_dies_with_its_runner() -> None:
    """A live tool started a process out of its group without the token (``setsid env -i``):
    it holds the runner's tag alone, and the guardian finds it by the tag and kills it."""
    async with GuardedRunner.start("tag-only") as runner:
        tag_only = runner.pids["tag-only"]
        sleeping = Path(f"/proc/{tag_only}/cmdline")
        while not sleeping.read_bytes().startswith(b"sleep\0"):  # noqa: ASYNC110 - its exec
            await asyncio.sleep(0.01)  # (setsid and env exec in turn)
        assert b"JOBRUNNER_GUARDIAN" not in Path(f"/proc/{tag_only}/environ").read_bytes()
        assert os.getpgid(tag_only) == tag_only
        await runner.kill()
        await wait_dead(tag_only)
        await wait_dead(runner.pids["tool"])


async def test_a_detached_descendant_of_an_ended_tool_is_spared_and_one_of_a_live_tool_dies() -> (
    None
):
    """Two tools each started a detached child (setsid: out of the group, with the runner's
    token and tag). The first tool's group ended: its detached child left the job and outlives
    the runner; the running tool's dies with the runner."""
    async with GuardedRunner.start("detached") as runner:
        spared, killed = runner.pids["ended-detached"], runner.pids["live-detached"]
        await runner.kill()
        await wait_dead(killed)
        await wait_dead(runner.pids["guardian"])  # it has done its work
        assert pid_alive(spared)


async def test_a_guardian_that_keeps_dying_at_once_is_started_ever_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A guardian whose program is gone (an upgrade under a running runner) dies at once:
    started again after 0.1 s, 0.2 s, 0.4 s and so on, not in a loop."""
    guard = guardian.Guardian()
    try:
        assert guard.start()
        monkeypatch.setattr(guardian, "_PROGRAM", "/nonexistent/guardian_main.py")
        assert guard.pid is not None
        os.kill(guard.pid, signal.SIGKILL)
        seen = set()
        loop = asyncio.get_running_loop()
        until = loop.time() + 2
        while loop.time() < until:
            seen.add(guard.pid)
            await asyncio.sleep(0.005)
        # The first, the one started at once for it (killed, not ended), then after 0.1, 0.2,
        # 0.4 and 0.8 s: six at most in two seconds (there were dozens)
        assert len(seen - {None}) <= 6
    finally:
        guard.stop()


async def test_the_guardian_never_kills_a_process_that_got_a_written_pid() -> None:
    """Two processes of no runner: one whose pid was written down with other start ticks (a pid
    reused since), one written down and then forgotten (its tool's group ended). The runner
    SIGKILLed, the guardian kills neither."""
    strangers = [
        await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
        for _ in range(2)
    ]
    try:
        async with GuardedRunner.start("strangers", *(p.pid for p in strangers)) as runner:
            await runner.kill()
            await wait_dead(runner.pids["guardian"])  # it has done its work
            assert all(p.returncode is None and pid_alive(p.pid) for p in strangers)
    finally:
        for stranger in strangers:
            stranger.kill()
            await stranger.wait()
