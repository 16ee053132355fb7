"""The tool ledger: a record written into the file prepared for it, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jobrunner.services.runner.orphans import ToolLedger, ToolRecord


def record(job_id: str) -> ToolRecord:
    return ToolRecord(
        job_id=job_id, pgid=4242, started=17, boot_id="boot", runner_pid=99, runner_started=3
    )


def test_a_record_is_written_into_the_file_prepared_before_the_spawn(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.prepare("job-1")
    (prepared,) = (tmp_path / "runner-tools").iterdir()
    inode = prepared.stat().st_ino
    ledger.record(record("job-1"))
    (written,) = (tmp_path / "runner-tools").iterdir()
    # The same file, renamed: no file created on the way from the spawn to the first line.
    assert written.name == "job-1.json"
    assert written.stat().st_ino == inode
    assert ledger.records() == [record("job-1")]


def test_a_record_without_a_prepared_file_is_written_all_the_same(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.record(record("job-2"))
    assert ledger.records() == [record("job-2")]
    assert [p.name for p in (tmp_path / "runner-tools").iterdir()] == ["job-2.json"]


def test_a_job_that_never_started_leaves_no_file(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.prepare("job-3")
    ledger.discard("job-3")
    ledger.prepare("job-4")
    ledger.remove("job-4")  # a job whose execution had no tool (an internal callable)
    assert list((tmp_path / "runner-tools").iterdir()) == []


def test_discarding_a_prepared_file_keeps_the_record_of_the_job(tmp_path: Path) -> None:
    # Runners on one host share the directory: a runner that did not get a job (another one
    # claimed it) discards only its own file, never the record of the runner running it.
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.record(record("job-5"))
    ledger.prepare("job-5")
    ledger.discard("job-5")
    assert ledger.records() == [record("job-5")]
    assert [p.name for p in (tmp_path / "runner-tools").iterdir()] == ["job-5.json"]


def test_files_prepared_by_a_runner_that_is_gone_are_removed_at_start_up(tmp_path: Path) -> None:
    directory = tmp_path / "runner-tools"
    ledger = ToolLedger(directory)
    ledger.prepare("job-6")  # this process's: alive
    dead_pid = _exited_pid()
    (directory / f"job-7.{dead_pid}.tmp").touch()
    # Being written by a runner of the version before (no pid in its name): left alone, as
    # that runner may be alive and about to rename it.
    (directory / "job-8.tmp").touch()
    assert ledger.end_orphans() == []
    assert sorted(p.name for p in directory.iterdir()) == [f"job-6.{os.getpid()}.tmp", "job-8.tmp"]


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
