"""How the terminal client prints a job's lines and status: on a terminal each line in its
level's colour and a failed job's status in red, whichever command prints them; a level the
tool coloured itself shown once; the tool's words as written."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import RUNNER_TYPES
from tests.tools.terminal_client import finish, jobrunner, start_client, terminal_env

ERROR_LINE = "ERROR disk full"
WARNING_LINE = "WARNING low on space"
COLOURED_LEVEL = "\x1b[32mINFO\x1b[0m started"  # the tool's own green level
EMOJI_CODES = "ratio :100: done :smile:"  # rich made these emoji when printing a string
OUTPUT = "\n".join([ERROR_LINE, WARNING_LINE, COLOURED_LEVEL, EMOJI_CODES]) + "\n"
# rich on a terminal of the 16 standard colours: bold red (ERROR), yellow (WARNING), red.
BOLD_RED, YELLOW, RED, RESET = "\x1b[1;31m", "\x1b[33m", "\x1b[31m", "\x1b[0m"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, auth=True)


@pytest.fixture
async def ended_job(system: System, tmp_path: Path) -> str:
    """A job that printed ``OUTPUT`` and completed."""
    path = tmp_path / "lines.txt"
    path.write_text(OUTPUT)
    run = await jobrunner(system, "submit", "cat_file", "-p", f"file={path}", "--follow")
    assert run.code == 0, run.err
    return _job_id(run.err)


def _job_id(said: str) -> str:
    job_ids = [word for word in said.split() if len(word) == 32]
    assert job_ids, said
    return job_ids[0]


@pytest.mark.parametrize(
    "args", [["logs"], ["logs", "--tail", "50", "--follow"]], ids=["logs", "tail-and-follow"]
)
async def test_logs_on_a_terminal_colour_each_line_by_its_level(
    system: System, ended_job: str, args: list[str]
) -> None:
    """`jobrunner logs` (and the stored lines `logs --tail 50 --follow` prints first) show an
    ERROR line bold red and a WARNING line yellow, as `--follow` shows live lines (they came
    out with no colour at all)."""
    run = await finish(await start_client(system, *args, ended_job, env=terminal_env(system)))
    assert run.code == 0, run.err
    assert f"{BOLD_RED}{ERROR_LINE}{RESET}" in run.out
    assert f"{YELLOW}{WARNING_LINE}{RESET}" in run.out


async def test_logs_show_a_level_the_tool_coloured_once(system: System, ended_job: str) -> None:
    """A tool's green "INFO started" prints as "INFO started" (its colour dropped), not as
    "INFO    INFO started"."""
    run = await jobrunner(system, "logs", ended_job)
    assert run.code == 0, run.err
    assert "INFO started" in run.out
    assert "INFO    INFO" not in run.out


async def test_logs_print_emoji_codes_as_written(system: System, ended_job: str) -> None:
    """A line saying "ratio :100: done :smile:" is printed so, not with emoji for the codes."""
    run = await jobrunner(system, "logs", ended_job)
    assert run.code == 0, run.err
    assert EMOJI_CODES in run.out


async def test_show_on_a_terminal_colours_a_failed_status_red(system: System) -> None:
    """`jobrunner show` of a failed job prints "failed" in red (it came out uncoloured)."""
    run = await jobrunner(system, "submit", "emit", "-p", "lines=1", "-p", "exit_code=3", "-f")
    assert run.code == 3, run.err
    shown = await finish(
        await start_client(system, "show", _job_id(run.err), env=terminal_env(system))
    )
    assert shown.code == 0, shown.err
    assert f"{RED}failed{RESET}" in shown.out
