"""Any output is captured: hostile bytes, progress, levels, results, environment and masks."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.services.runner.output import SPLIT_MARKER
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, lines_of, start_job, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def _run(system: System, job_type: str, **parameters: object) -> tuple[dict, list[dict]]:
    async with system.client() as client:
        job_id = await start_job(client, job_type, **parameters)
        job = await wait_status(client, job_id, "completed", "failed", "cancelled")
        return job, await lines_of(client, job_id)


async def test_line_longer_than_64_kib_is_split_with_a_marker(system: System) -> None:
    """A 100,000-character line arrives whole, in two marked pieces."""
    job, lines = await _run(system, "hostile", mode="long_line")
    assert job["status"] == "completed"
    texts = [ln["text"] for ln in lines]
    assert len(texts) == 2
    assert texts[0].endswith(SPLIT_MARKER)
    assert "".join(t.removesuffix(SPLIT_MARKER) for t in texts) == "L" * 100_000


async def test_ten_megabyte_line_without_newline_is_captured(system: System) -> None:
    """10 MB with no newline: no crash or hang, every byte kept across marked pieces."""
    job, lines = await _run(system, "hostile", mode="huge_no_newline")
    assert job["status"] == "completed"
    texts = [ln["text"] for ln in lines]
    assert all(t.endswith(SPLIT_MARKER) for t in texts[:-1])
    assert sum(len(t.removesuffix(SPLIT_MARKER)) for t in texts) == 10_000_000


async def test_line_cap_is_configurable(settings: Settings, system: System) -> None:
    """With max_line_bytes = 1000, a 100,000-byte line is cut into marked 1000-byte pieces."""
    await system.stop_service("runner")
    await system.start_runner("small", max_line_bytes=1000)
    _job, lines = await _run(system, "hostile", mode="long_line")
    assert len(lines) == 100
    assert {len(ln["text"]) for ln in lines[:-1]} == {1000 + len(SPLIT_MARKER)}


async def test_split_never_cuts_a_utf8_character(settings: Settings, system: System) -> None:
    """Splitting a line of umlauts keeps every umlaut intact."""
    await system.stop_service("runner")
    await system.start_runner("small", max_line_bytes=65)
    _job, lines = await _run(system, "hostile", mode="utf8_split")
    text = "".join(ln["text"].removesuffix(SPLIT_MARKER) for ln in lines)
    assert text == "ä" * 100


async def test_invalid_utf8_is_replaced_not_dropped(system: System) -> None:
    """Bytes that are not UTF-8 show as U+FFFD; the rest of the line is kept."""
    _, lines = await _run(system, "hostile", mode="invalid_utf8")
    assert lines[0]["text"] == "bad \ufffd\ufffd bytes \ufffd"


async def test_nul_bytes_are_shown_not_dropped(system: System) -> None:
    """A NUL byte in a line is shown as ␀."""
    _, lines = await _run(system, "hostile", mode="nul")
    assert lines[0]["text"] == "before␀after"


async def test_ansi_colours_are_kept_and_level_still_parsed(system: System) -> None:
    """A coloured ERROR line keeps its colours for the web UI and is parsed as level ERROR."""
    _, lines = await _run(system, "hostile", mode="ansi")
    assert lines[0]["text"] == "\x1b[31mERROR\x1b[0m \x1b[1mred\x1b[0m alert"
    assert lines[0]["level"] == "ERROR"


async def test_the_download_is_plain_text_without_colour_codes(system: System) -> None:
    """The downloaded log shows a coloured line as plain text."""
    async with system.client() as client:
        job_id = await start_job(client, "hostile", mode="ansi")
        await wait_status(client, job_id, "completed")
        download = await client.get(f"/api/jobs/{job_id}/logs/download")
    assert download.text.endswith(" ERROR   ERROR red alert\n")
    assert "\x1b" not in download.text


async def test_cursor_escape_codes_are_removed(system: System) -> None:
    """Escape sequences other than colours (cursor moves, clear line) do not reach the log."""
    _, lines = await _run(system, "hostile", mode="cursor_codes")
    assert lines[0]["text"] == "\x1b[32mok\x1b[0m cleared"


async def test_every_escape_sequence_but_colours_is_removed(system: System) -> None:
    """A tool printing each kind of sequence a terminal would obey (Fs, Fp, nF, Fe, CSI, OSC, DCS,
    SOS/PM/APC with payloads, 8-bit C1, a string never ended, a lone ESC at the end): the stored
    lines, the streamed ones and the download hold none of it; colours, tabs and the other C0
    controls (BEL, BS) stay in the stored and streamed lines, and the download, opened in a
    terminal, shows BEL and BS as symbols (it rings and overwrites nothing) and no colour code."""
    async with system.client() as client:
        job_id = await start_job(client, "hostile", mode="escape_kinds")
        await wait_status(client, job_id, "completed")
        stored = [ln["text"] for ln in await lines_of(client, job_id)]
        stream = await read_stream(client, f"/jobs/stream/{job_id}")
        download = (await client.get(f"/api/jobs/{job_id}/logs/download")).text
    expected = ["ab"] * 9 + [
        "bell\x07 back\x08space",
        "\x1b[32mgreen\x1b[0m\ttab",
        "cut short",
        "last",
    ]
    assert stored == expected
    assert [e.json["text"] for e in stream.events if e.event == "message"] == expected
    assert not any(c in download for c in "\x1b\x07\x08\u0085\u009b\u009c\u009d")
    shown = [line.split(maxsplit=2)[2] for line in download.split("\n")[:-1]]
    assert shown[9:] == ["bell␇ back␈space", "green\ttab", "cut short", "last"]


async def test_carriage_return_progress_bar_keeps_last_state_and_reports_progress(
    system: System,
) -> None:
    """A \\r progress bar becomes one line with its final state, and progress 4/4."""
    job, lines = await _run(system, "hostile", mode="cr_progress")
    assert [ln["text"] for ln in lines] == ["downloading [4/4]", "done"]
    assert job["progress"]["current"] == 4
    assert job["progress"]["total"] == 4


async def test_interleaved_stdout_and_stderr_are_all_captured(system: System) -> None:
    """200 lines alternating between stdout and stderr: each once, on its stream, seq 1..200."""
    _, lines = await _run(system, "hostile", mode="interleaved")
    assert sorted(ln["seq"] for ln in lines) == list(range(1, 201))
    by_text = {ln["text"]: ln["stream"] for ln in lines}
    assert len(by_text) == 200
    assert all(by_text[f"line {i}"] == ("stdout" if i % 2 else "stderr") for i in range(1, 201))


async def test_tool_that_closes_stdout_keeps_running_and_is_captured(system: System) -> None:
    """A tool closing stdout early still has its later stderr line captured, and completes."""
    job, lines = await _run(system, "hostile", mode="close_stdout")
    assert job["status"] == "completed"
    assert [ln["text"] for ln in lines] == ["before close", "still running on stderr"]


async def test_silent_tool_outlives_several_lease_ttls(system: System) -> None:
    """A tool printing nothing for longer than the lease TTL is not mistaken for a lost one."""
    job, lines = await _run(system, "hostile", mode="silent", seconds="4")
    assert job["status"] == "completed"
    assert lines == []


async def test_progress_protocol_and_result_reach_the_job(system: System) -> None:
    """Protocol lines set progress (percent, phase, message) and the result; others are logs."""
    async with system.client() as client:
        job_id = await start_job(client, "protocol")
        job = await wait_status(client, job_id, "completed", "failed")
        stream = await read_stream(client, f"/jobs/stream/{job_id}")
    lines = [e.json for e in stream.events if e.event == "message"]
    progress = [e.json for e in stream.events if e.event == "progress"]
    assert not any(ln["text"].startswith("##jobrunner:progress {") for ln in lines[:1])
    assert job["result"] == {
        "summary": "89 Websites gefunden, 38 ohne Ergebnis",
        "found": 89,
        "missing": 38,
    }
    assert job["progress"] == {
        "current": 4,
        "total": 4,
        "percent": 100.0,
        "phase": "fertig",
        "message": "done",
    }
    assert progress[-1]["phase"] == "fertig"
    # A malformed protocol line is kept as a log line, not lost.
    assert "##jobrunner:progress {broken json" in [ln["text"] for ln in lines]


async def test_level_comes_from_the_start_or_after_a_timestamp(system: System) -> None:
    """Levels are read where tools put them; the word ERROR mid-line does not count."""
    _, lines = await _run(system, "protocol")
    level = {ln["text"]: ln["level"] for ln in lines}
    assert level["2025-12-27 12:15:00 WARNING something odd"] == "WARNING"
    assert level["INFO the word ERROR in the middle does not make this an error"] == "INFO"
    assert level["[12:15:01] ERROR real error"] == "ERROR"


async def test_level_pattern_of_a_job_type_overrides_the_default(system: System) -> None:
    """A job type's level_pattern reads its tool's own level format."""
    _, lines = await _run(system, "custom_levels")
    assert [ln["level"] for ln in lines] == ["WARNING", "INFO", "ERROR"]


async def test_progress_pattern_of_a_job_type(system: System) -> None:
    """A job type's progress_pattern turns 'step 8 of 8' into progress."""
    job, _ = await _run(system, "custom_progress")
    assert job["progress"]["current"] == 8
    assert job["progress"]["percent"] == 100.0


async def test_result_pattern_turns_the_summary_line_into_the_result(system: System) -> None:
    """'SUCCESS 89 Websites gefunden, 38 ohne Ergebnis' lands in result with its numbers."""
    job, _ = await _run(system, "summary")
    assert job["result"] == {
        "summary": "89 Websites gefunden, 38 ohne Ergebnis",
        "found": 89,
        "missing": 38,
    }


async def test_cwd_env_and_mask_of_a_job_type(
    system: System, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool runs in the type's cwd with its env from ${VAR}; the secret shows as ***."""
    monkeypatch.setenv("RUNNER_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("RUNNER_TEST_NAME", "the runner")
    monkeypatch.setenv("RUNNER_TEST_SECRET", "s3cr3t-value")
    _, lines = await _run(system, "environment")
    texts = [ln["text"] for ln in lines]
    assert texts == [f"cwd {tmp_path}", "greeting hello from the runner", "token ***"]


async def test_tools_do_not_inherit_the_runners_own_settings(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's JOBRUNNER_* settings (database password included) never reach a tool."""
    monkeypatch.setenv("JOBRUNNER_DATABASE_URL", "postgresql://jobrunner:secret@db/jobrunner")
    monkeypatch.setenv("RUNNER_TEST_VISIBLE", "yes")
    _, lines = await _run(system, "env_names")
    names = {ln["text"] for ln in lines}
    assert "RUNNER_TEST_VISIBLE" in names
    assert "JOBRUNNER_DATABASE_URL" not in names
    assert "JOBRUNNER_DEMO_PACE" in names


async def test_lines_of_control_characters_fit_in_messages(system: System) -> None:
    """20 lines of 64 KiB control characters (7.5 MB as JSON) are all stored, none split."""
    job, lines = await _run(system, "hostile", mode="control_flood")
    assert job["status"] == "completed"
    assert [ln["text"] for ln in lines] == [chr(1 + i % 8) * 65536 for i in range(20)]


async def test_absurd_progress_and_nul_leave_the_job_visible_and_clamped(system: System) -> None:
    """[99999999999999999999/5], percent 250 and NULs: the job completes, progress within 0-100."""
    job, lines = await _run(system, "hostile", mode="absurd_progress")
    assert job["status"] == "completed"
    # The two [i/N] lines, and the protocol line whose count is out of range, logged as it is.
    assert len(lines) == 3
    assert lines[2]["text"].startswith('##jobrunner:progress {"current": -3')
    assert job["progress"]["percent"] == 100.0
    assert "\x00" not in (job["progress"]["message"] or "")
    assert job["result"] == {"summary": "nul␀here", "n": 99999999999999999999}
