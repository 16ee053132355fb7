"""The runner's collection while something outside the job still changes the output directory
(a tool's child that escaped its job): what it stores is what it read, whole and matching its
digest, and never a file outside the directory. Real NATS; the collector's own hooks (``publish``
after each file, ``should_stop`` at each chunk) make each change land at a known point."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner import artifacts
from jobrunner.services.runner.artifacts import ArtifactCollector, OutputDirectory, StoreResult

SECRET = b"outside the output directory: must never be read"
CHUNK = artifactstore.CHUNK_BYTES


async def _collect(
    js: JetStreamContext,
    settings: Settings,
    directory: OutputDirectory,
    after_each: Callable[[str], None] = lambda name: None,
    at_each_chunk: Callable[[], None] = lambda: None,
) -> tuple[StoreResult, list[str]]:
    said: list[str] = []

    async def publish(event: events.ArtifactStored) -> None:
        after_each(event.name)

    def should_stop() -> bool:
        at_each_chunk()
        return False

    collector = ArtifactCollector(
        js, Names(settings.prefix), settings, "job1", said.append, publish, should_stop
    )
    return await collector.collect(directory), said


async def _read_back(
    js: JetStreamContext, settings: Settings, stored: events.ArtifactStored
) -> bytes:
    names = Names(settings.prefix)
    info = await artifactstore.object_info(js, names, stored.object_name)
    return b"".join([c async for c in artifactstore.read_chunks(js, names, info, 5.0)])


@pytest.mark.parametrize("swapped", ["sub", "sub/secret.txt"])
async def test_a_link_swapped_in_during_collection_is_never_followed(
    js: JetStreamContext, settings: Settings, tmp_path: Path, swapped: str
) -> None:
    """Once ``a.txt`` is stored, the folder ``sub`` (or the file ``sub/secret.txt``) listed
    before is replaced by a link to a folder (a file) outside holding other bytes: they are not
    read. On main the folder case stored the outside file (only the last part had O_NOFOLLOW)."""
    directory = OutputDirectory.create(settings, "job1")
    (directory.path / "a.txt").write_bytes(b"first")
    (directory.path / "sub").mkdir()
    (directory.path / "sub" / "secret.txt").write_bytes(b"the job's own file")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)

    def swap(name: str) -> None:
        if name == "a.txt":
            victim = directory.path / swapped
            victim.rename(tmp_path / "moved-away")
            os.symlink(outside if swapped == "sub" else outside / "secret.txt", victim)

    result, said = await _collect(js, settings, directory, after_each=swap)
    assert [e.name for e in result.stored] == ["a.txt"], said
    assert all(e.sha256 != hashlib.sha256(SECRET).hexdigest() for e in result.stored)
    assert any("symbolic link" in s and "secret.txt" in s for s in said), said
    await directory.remove()


@pytest.mark.parametrize("change", ["truncate", "append", "replace", "overwrite"])
async def test_a_file_changed_while_it_is_read_is_stored_as_read(
    js: JetStreamContext, settings: Settings, tmp_path: Path, change: str
) -> None:
    """A 1 MiB file truncated, appended to, replaced (renamed over) or overwritten in place after
    its third chunk was read: what is stored is whole and matches its size and SHA-256."""
    directory = OutputDirectory.create(settings, "job1")
    path = directory.path / "big.bin"
    original = os.urandom(8 * CHUNK)
    path.write_bytes(original)
    chunks = 0

    def hurt() -> None:
        nonlocal chunks
        chunks += 1
        if chunks != 3:
            return
        if change == "truncate":
            os.truncate(path, CHUNK + 100)
        elif change == "append":
            with path.open("ab") as f:
                f.write(b"x" * CHUNK)
        elif change == "replace":
            (directory.path / ".new").write_bytes(b"other")
            os.replace(directory.path / ".new", path)
        else:
            with path.open("r+b") as f:
                f.write(b"\0" * (8 * CHUNK))

    result, said = await _collect(js, settings, directory, at_each_chunk=hurt)
    assert [e.name for e in result.stored] == ["big.bin"], said
    stored = result.stored[0]
    body = await _read_back(js, settings, stored)
    assert len(body) == stored.size
    assert hashlib.sha256(body).hexdigest() == stored.sha256
    if change in ("append", "replace"):
        assert body == original  # read up to the size it had when opened, from that inode
    await directory.remove()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_link_in_place_of_the_jobs_folder_is_not_followed(
    js: JetStreamContext, settings: Settings, tmp_path: Path
) -> None:
    """The tool renames ``$JOBRUNNER_OUTPUT_DIR/..`` away (it may write there) and puts a link in
    its place to a folder whose ``out`` is another job's output directory: nothing of it is
    stored, and the removal leaves the other job's folder (even an empty ``out``) alone. Before
    the descriptors were held, the runner stored ``secret.txt`` and rmdir'ed an empty ``out``."""
    before = _open_descriptors()
    for other_files in (True, False):
        directory = OutputDirectory.create(settings, "job1")
        other = tmp_path / f"other-job-{other_files}"
        (other / "out").mkdir(parents=True)
        if other_files:
            (other / "out" / "secret.txt").write_bytes(SECRET)
        directory.root.rename(tmp_path / f"moved-away-{other_files}")
        os.symlink(other, directory.root)
        result, said = await _collect(js, settings, directory)
        assert all(e.sha256 != hashlib.sha256(SECRET).hexdigest() for e in result.stored), said
        assert result.stored == [], said
        await directory.remove()
        assert (other / "out").is_dir()
        assert (other / "out" / "secret.txt").exists() == other_files
        assert not (tmp_path / f"moved-away-{other_files}" / "out").exists()
    assert _open_descriptors() == before  # every descriptor held is closed again


async def test_an_output_directory_removed_or_replaced_stores_nothing(
    js: JetStreamContext, settings: Settings, tmp_path: Path
) -> None:
    """Each way the name ``out`` stops standing for the runner's folder has its own sentence."""
    sentences = {}
    for how in ("removed", "file", "other folder"):
        directory = OutputDirectory.create(settings, "job1")
        (directory.path / "a.txt").write_bytes(b"the job's")
        directory.path.rename(tmp_path / f"moved-{how}")
        if how == "file":
            directory.path.write_bytes(b"a file")
        elif how == "other folder":
            directory.path.mkdir()
            (directory.path / "b.txt").write_bytes(SECRET)
        result, said = await _collect(js, settings, directory)
        assert result.stored == [], said
        sentences[how] = [s for s in said if "JOBRUNNER_OUTPUT_DIR" in s]
        await directory.remove()
        assert not directory.root.exists()
    assert sentences == {
        "removed": ["artifact JOBRUNNER_OUTPUT_DIR was removed or moved away; nothing stored"],
        "file": ["artifact JOBRUNNER_OUTPUT_DIR itself is no folder; nothing stored"],
        "other folder": [
            "artifact JOBRUNNER_OUTPUT_DIR itself is another folder than the one the runner "
            "made; not read; nothing stored"
        ],
    }


async def test_a_subfolder_swapped_while_listed_is_not_walked(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``z`` is swapped for a link while ``a`` (listed before it) is walked: the listing does not
    walk the outside folder (names of files the job may not see would end up in its log). Before
    the walk went by descriptors, ``z/private-name.txt`` was listed."""
    directory = OutputDirectory.create(settings, "job1")
    (directory.path / "a").mkdir()
    (directory.path / "z").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private-name.txt").write_bytes(SECRET)
    a = os.stat(directory.path / "a")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        listed = os.fstat(path) if isinstance(path, int) else os.stat(path)
        if os.path.samestat(listed, a) and not os.path.islink(directory.path / "z"):
            (directory.path / "z").rename(tmp_path / "moved-away")
            os.symlink(outside, directory.path / "z")
        return real_scandir(path)

    monkeypatch.setattr(artifacts.os, "scandir", scandir)
    listing = artifacts.list_output(directory)
    monkeypatch.setattr(artifacts.os, "scandir", real_scandir)
    shown = [c.name for c in listing.files] + listing.skipped
    assert not any("private-name" in s for s in shown), shown
    assert any("'z' was replaced by a symbolic link" in s for s in shown), shown
    await directory.remove()
    assert list(outside.iterdir()) == [outside / "private-name.txt"]
