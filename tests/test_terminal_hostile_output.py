"""The terminal client prints whatever a tool wrote as text: never as rich markup (a result
naming ``[/data/out]`` crashed ``jobrunner show``), never as the terminal's own control
sequences (a line could reset the operator's terminal or switch it to line-drawing glyphs)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import RUNNER_TYPES
from tests.tools.terminal_client import (
    client_env,
    finish,
    jobrunner,
    start_client,
    terminal_env,
)

# What the runner's cleaning lets through (it removes cursor moves, titles and other CSI/OSC
# sequences, keeps colours): a terminal reset (ESC c: the screen and scrollback cleared), the
# line-drawing character set (ESC ( 0: every later letter garbage), a screen of E's (ESC # 8),
# an 8-bit CSI (U+009B: "clear the screen" to a terminal that takes C1 controls), colours.
RESET = "ERROR disk full\x1bc after the reset"
CHARSET = "\x1b(0line drawing\x1b(B"
SCREEN_OF_ES = "\x1b#8screen of Es"
C1_CSI = "\u009b2Jcleared"
COLOURED = "\x1b[31mred\x1b[0m text"
HOSTILE = ("\x1bc", "\x1b(0", "\x1b#8", "\u009b", "\x1b[31mred")
# rich markup a tool's report may hold by chance: a path in brackets, a word in brackets.
BRACKETS = "5 files in [/data/out] [red]x"
GREETING = "Grüße aus Köln"  # what `show` printed as "Gr\u00fc\u00dfe aus K\u00f6ln"
OUTPUT = (
    "\n".join([RESET, CHARSET, SCREEN_OF_ES, C1_CSI, COLOURED]).encode()
    + b"\n##jobrunner:progress "
    + msgspec.json.encode({"current": 1, "total": 2, "phase": "[/phase]"})
    + b"\n##jobrunner:result "
    + msgspec.json.encode({"summary": BRACKETS, "greeting": GREETING})
    + b"\n"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, auth=True)


@pytest.fixture
def output_file(tmp_path: Path) -> str:
    path = tmp_path / "hostile-output.txt"
    path.write_bytes(OUTPUT)
    return str(path)


async def _ended_job(system: System, output_file: str) -> str:
    run = await jobrunner(system, "submit", "cat_file", "-p", f"file={output_file}", "--follow")
    assert run.code == 0, run.err
    job_ids = [word for word in run.err.split() if len(word) == 32]
    assert job_ids, run.err
    return job_ids[0]


def _assert_shown_as_text(out: str) -> None:
    """None of the tool's sequences reaches the terminal as itself; its words all do."""
    for sequence in HOSTILE:
        assert sequence not in out
    for words in ("ERROR disk full", "after the reset", "line drawing", "screen of Es", "cleared"):
        assert words in out
    assert "red text" in out  # the tool's colours dropped, its words kept


async def test_show_prints_a_result_with_brackets_as_it_is(
    system: System, output_file: str
) -> None:
    """`jobrunner show` of a job whose result says "[/data/out] [red]x" prints it as written
    and exits 0 (it ended in a rich MarkupError traceback)."""
    job_id = await _ended_job(system, output_file)
    shown = await jobrunner(system, "show", job_id)
    assert shown.code == 0, shown.err
    assert "Traceback" not in shown.err
    assert BRACKETS in shown.out


async def test_show_prints_a_non_ascii_result_as_written(system: System, output_file: str) -> None:
    """`jobrunner show` prints a result's "Grüße aus Köln" as such, not as JSON escapes."""
    job_id = await _ended_job(system, output_file)
    shown = await jobrunner(system, "show", job_id)
    assert shown.code == 0, shown.err
    assert GREETING in shown.out


async def test_jobs_lists_a_progress_phase_with_brackets_as_it_is(
    system: System, output_file: str
) -> None:
    """`jobrunner jobs` lists a job whose progress phase is "[/phase]" with that phase."""
    await _ended_job(system, output_file)
    listed = await jobrunner(system, "jobs")
    assert listed.code == 0, listed.err
    assert "Traceback" not in listed.err
    assert "[/phase]" in listed.out


async def test_logs_show_a_tools_escape_sequences_instead_of_obeying_them(
    system: System, output_file: str
) -> None:
    """`jobrunner logs` writes no escape sequence a tool printed: the terminal shows them."""
    job_id = await _ended_job(system, output_file)
    logs = await jobrunner(system, "logs", job_id)
    assert logs.code == 0, logs.err
    _assert_shown_as_text(logs.out)
    assert "\x1b" not in logs.out
    assert "\u009b" not in logs.out


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
async def test_follow_shows_a_tools_escape_sequences_instead_of_obeying_them(
    system: System, output_file: str, terminal: bool
) -> None:
    """`jobrunner submit --follow` (piped, or on a terminal with its progress bar) writes no
    escape byte a tool printed and takes no markup from its progress phase."""
    env = terminal_env(system) if terminal else client_env(system, system.admin_token)
    proc = await start_client(
        system, "submit", "cat_file", "-p", f"file={output_file}", "--follow", env=env
    )
    run = await finish(proc)
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    _assert_shown_as_text(run.out)
    if not terminal:
        assert "\x1b" not in run.out  # piped: no escape byte at all
        assert "\u009b" not in run.out
