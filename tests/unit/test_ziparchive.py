"""The streamed ZIP: written from chunks without seeking, read back by zipfile and by unzip."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from jobrunner.services.api.ziparchive import Member, zip_stream

FILES = {"a.txt": b"hello", "sub/b.bin": bytes(range(256)) * 1000, "empty": b""}
WHEN = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def _contents(files: dict[str, bytes], chunk: int = 4096):  # type: ignore[no-untyped-def]
    async def contents(member: Member) -> AsyncIterator[bytes]:
        data = files[member.name]
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]

    return contents


async def _archive(files: dict[str, bytes]) -> bytes:
    members = [Member(name, len(data), WHEN) for name, data in files.items()]
    return b"".join([part async for part in zip_stream(members, _contents(files))])


async def test_archive_holds_every_member_byte_for_byte() -> None:
    """Unpacking the streamed archive gives back each file under its name."""
    with zipfile.ZipFile(io.BytesIO(await _archive(FILES))) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == FILES
        assert archive.getinfo("a.txt").date_time == (2026, 11, 30, 12, 0, 0)
        assert archive.getinfo("a.txt").extra == b""  # small: no ZIP64 records


async def test_members_over_the_zip64_limit_get_zip64_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member larger than the ZIP64 limit is written with ZIP64 sizes and still reads back.

    (The limit is lowered to 64 KiB here: 4 GiB of test data would take minutes.)"""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64 * 1024)
    big = {"big.bin": bytes(200 * 1024), "small.txt": b"x"}
    data = await _archive(big)
    monkeypatch.undo()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == big
        # The central directory entry carries the ZIP64 extra field (header id 0x0001).
        assert archive.getinfo("big.bin").extra[:2] == b"\x01\x00"


async def test_archive_of_nothing_is_an_empty_valid_zip() -> None:
    """No members: still a valid (empty) archive."""
    with zipfile.ZipFile(io.BytesIO(await _archive({}))) as archive:
        assert archive.namelist() == []
