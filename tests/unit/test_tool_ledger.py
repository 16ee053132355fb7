"""The tool ledger: a record written into the file prepared for it, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jobrunner.services.runner.orphans import SPARES_KEPT, ToolLedger, ToolRecord


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


def test_a_job_that_never_started_leaves_no_record(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.prepare("job-3")
    ledger.discard("job-3")
    ledger.prepare("job-4")
    ledger.remove("job-4")  # a job whose execution had no tool (an internal callable)
    assert ledger.records() == []
    # Only this runner's spares are left, named so that a start after its death removes them.
    assert [p.name.rpartition(".")[0].rpartition(".")[2] for p in _files(tmp_path)] == [
        str(os.getpid())
    ]


def test_an_ended_jobs_file_is_reused_and_holds_only_the_next_record(tmp_path: Path) -> None:
    """Renamed, not created nor unlinked (each cost ms here); the next record is written over
    whatever the file held, a longer record included, and read back whole."""
    ledger = ToolLedger(tmp_path / "runner-tools")
    long_one = ToolRecord(
        job_id="job-long", pgid=1, started=1, boot_id="b" * 600, runner_pid=1, runner_started=1
    )
    ledger.record(long_one)
    ledger.remove(long_one.job_id)
    (spare,) = _files(tmp_path)
    inode = spare.stat().st_ino
    ledger.prepare("job-9")
    ledger.record(record("job-9"))
    (written,) = _files(tmp_path)
    assert (written.name, written.stat().st_ino) == ("job-9.json", inode)
    assert ledger.records() == [record("job-9")]
    ledger.remove("job-9")
    ledger.prepare("job-10")
    ledger.record(record("job-10"))
    assert ledger.records() == [record("job-10")]


def test_spares_are_few(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "runner-tools")
    for n in range(SPARES_KEPT + 5):
        ledger.record(record(f"job-{n}"))
    for n in range(SPARES_KEPT + 5):
        ledger.remove(f"job-{n}")
    assert len(_files(tmp_path)) == SPARES_KEPT
    assert ledger.records() == []


def _files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runner-tools").iterdir())


def test_discarding_a_prepared_file_keeps_the_record_of_the_job(tmp_path: Path) -> None:
    # Runners on one host share the directory: a runner that did not get a job (another one
    # claimed it) discards only its own file, never the record of the runner running it.
    ledger = ToolLedger(tmp_path / "runner-tools")
    ledger.record(record("job-5"))
    ledger.prepare("job-5")
    ledger.discard("job-5")
    assert ledger.records() == [record("job-5")]
    assert [p.name for p in _files(tmp_path) if p.suffix == ".json"] == ["job-5.json"]


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


def test_spares_of_an_earlier_runner_of_the_same_pid_are_removed_at_start_up(
    tmp_path: Path,
) -> None:
    """A runner in a container often has the same pid at every start: the spares an earlier
    one left are not taken for this one's, and do not pile up start after start."""
    directory = tmp_path / "runner-tools"
    earlier = ToolLedger(directory)
    for job_id in ("job-11", "job-14"):
        earlier.record(record(job_id))
        earlier.remove(job_id)  # spares named with this pid
    ledger = ToolLedger(directory)  # the next start, same pid
    ledger.record(record("job-12"))
    ledger.remove("job-12")
    assert ledger.end_orphans() == []
    assert len(_files(tmp_path)) == 1  # its own spare only
    ledger.prepare("job-13")
    ledger.record(record("job-13"))
    assert ledger.records() == [record("job-13")]


def test_a_clean_stop_leaves_no_spares(tmp_path: Path) -> None:
    """The next start removes only a dead runner's spares, and by then a stranger may have the
    pid they are named with: closed, the ledger leaves none, nor of jobs that end after."""
    ledger = ToolLedger(tmp_path / "runner-tools")
    for job_id in ("job-15", "job-16", "job-17"):
        ledger.record(record(job_id))
    ledger.remove("job-15")
    ledger.prepare("job-18")
    ledger.close()
    assert [p.name for p in _files(tmp_path)] == [
        "job-16.json",
        "job-17.json",
        f"job-18.{os.getpid()}.tmp",
    ]
    ledger.remove("job-16")  # jobs still ending as the runner stops
    ledger.discard("job-18")
    assert [p.name for p in _files(tmp_path)] == ["job-17.json"]
