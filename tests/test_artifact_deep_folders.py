"""A tool leaving a folder tree deeper than a recursive removal can go (``shutil.rmtree``
recurses once per level and raises RecursionError near Python's 1,000 frames): the job still
ends, its folder goes, and a runner starting after one was killed still starts.

Each test works in a temp dir of its own, removed in a ``finally`` by the runner's own
non-recursive removal: a deep tree left in pytest's shared temp dir would break every later
run's cleanup. The depth is just past what breaks rmtree (1,200), no more."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.services.runner import artifacts
from jobrunner.services.runner.artifacts import OutputDirectory
from tests.system import System
from tests.tools.artifact_listing import artifacts_of, finished_artifact_job
from tests.tools.job_type_files import ARTIFACT_TYPES

DEPTH = 1200


@pytest.fixture
def own_dir() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="jobrunner-deep-test-"))
    try:
        yield made
    finally:
        fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY)
        try:
            artifacts.empty_folder(fd)
        finally:
            os.close(fd)
        os.rmdir(made)


@pytest.fixture
def settings(settings: Settings, own_dir: Path) -> Settings:
    return msgspec.structs.replace(
        settings,
        job_types_file=ARTIFACT_TYPES,
        lease_ttl_seconds=6.0,
        artifact_work_dir=str(own_dir / "outputs"),
    )


def _make_deep(folder_fd: int) -> None:
    """``DEPTH`` nested folders ``d/d/...`` in the folder ``folder_fd`` is open on."""
    fd = os.dup(folder_fd)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def test_the_depth_breaks_a_recursive_removal(own_dir: Path) -> None:
    """The premise: rmtree fails on a tree this deep (else the tests below prove nothing)."""
    fd = os.open(own_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _make_deep(fd)
    finally:
        os.close(fd)
    with pytest.raises(RecursionError):
        shutil.rmtree(own_dir / "d")


async def test_a_very_deep_folder_ends_the_job_and_is_removed(
    settings: Settings, system: System
) -> None:
    """The job ends once, completed, its good file stored, and nothing of its folder stays on
    the runner's disk (before: FAILED RUNNER_LOST, the folder left)."""
    async with system.client() as client:
        job = await finished_artifact_job(client, "artifacts", mode="deep")
        listed = await artifacts_of(client, job["id"])
    assert job["status"] == "completed", job.get("error")
    assert [a["name"] for a in listed["items"]] == ["kept.txt"]
    assert list(Path(settings.artifact_work_dir).iterdir()) == []


def test_removing_a_very_deep_output_directory_does_not_raise(settings: Settings) -> None:
    directory = OutputDirectory.create(settings, "job1")
    _make_deep(directory.fd)
    directory._remove()
    assert not directory.root.exists()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(directory.fd)  # closed


def test_leftovers_with_a_very_deep_folder_do_not_stop_a_runner_starting(
    settings: Settings,
) -> None:
    """A runner killed while its tool had made such a tree: the next runner's start removes
    it (before: RecursionError out of remove_leftovers, the runner never started)."""
    directory = OutputDirectory.create(settings, "job1")
    _make_deep(directory.fd)
    os.close(directory.fd)
    os.close(directory.root_fd)
    assert artifacts.remove_leftovers(settings) == 1
    assert not directory.root.exists()


def test_a_removal_that_fails_is_logged_not_raised(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a removal raises (here RecursionError, as rmtree did), neither the job's end
    nor a runner's start sees it: the folder stays, the descriptors are closed."""

    def fails(folder_fd: int) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    directory = OutputDirectory.create(settings, "job1")
    monkeypatch.setattr(artifacts, "empty_folder", fails)
    directory._remove()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(directory.fd)
    assert artifacts.remove_leftovers(settings) == 0
    assert directory.root.exists()


@pytest.mark.parametrize(("folder_chars", "walked"), [(1022, True), (1023, False)])
def test_the_walk_stops_at_a_folder_no_file_below_could_be_named(
    settings: Settings, folder_chars: int, walked: bool
) -> None:
    """A folder whose name leaves no room for ``/x`` (the shortest file below) is not walked:
    1,022 characters give ``.../x`` of exactly 1,024 (stored), 1,023 give 1,025 (before: walked
    all the same, each file then refused for its name)."""
    assert events.MAX_ARTIFACT_NAME_CHARS == 1024
    directory = OutputDirectory.create(settings, "job1")
    parts = ["a" * 200] * 5  # 1,004 characters with the slashes
    parts.append("b" * (folder_chars - 1004 - 1))
    folder = directory.path.joinpath(*parts)
    folder.mkdir(parents=True)
    (folder / "x").write_text("x")
    listing = artifacts.list_output(directory)
    directory._remove()
    name = "/".join(parts)
    assert len(name) == folder_chars
    if walked:
        assert [c.name for c in listing.files] == [f"{name}/x"]
    else:
        assert listing.files == []
        assert listing.skipped == [f"folder {name!r} is too deep; not stored"], listing.skipped


def test_a_folder_that_cannot_be_removed_is_left_and_the_rest_goes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rmdir refused for one folder (as for one the tool made unwritable, or a mount point):
    the removal neither loops nor raises; everything else goes, that folder stays (its file
    gone), and a later start removes it once it can."""
    directory = OutputDirectory.create(settings, "job1")
    for folder in ("a/locked/deeper", "b/c"):
        (directory.path / folder).mkdir(parents=True)
        (directory.path / folder / "f").write_text("f")
    real_rmdir = os.rmdir

    def rmdir(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "locked":
            raise PermissionError(1, "Operation not permitted", name)
        return real_rmdir(name, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", rmdir)
    directory._remove()
    left = sorted(str(p.relative_to(directory.root)) for p in directory.root.rglob("*"))
    assert left == ["out", "out/a", "out/a/locked"]
    assert artifacts.remove_leftovers(settings) == 0
    monkeypatch.setattr(os, "rmdir", real_rmdir)
    assert artifacts.remove_leftovers(settings) == 1
    assert not directory.root.exists()
