"""A ZIP archive written on the fly from streams of bytes, never held in memory.

The standard library's ``zipfile`` writes to a stream it cannot seek: each member's CRC and sizes
then follow its data in a data descriptor, and the central directory at the end repeats them.
Members are stored, not compressed (artifacts are often compressed already, and storing keeps a
download at the speed of the network). A member's size is given before its data, so ``zipfile``
writes ZIP64 records for members (and archives) over 4 GiB.
"""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    modified: datetime


class _Sink:
    """Collects what ``zipfile`` writes until the generator hands it on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    # ZIP times start in 1980; ``zipfile`` refuses earlier ones.
    year, month, day, hour, minute, second = moment.timetuple()[:6]
    if year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (year, month, day, hour, minute, second)


async def zip_stream(
    members: list[Member], contents: Callable[[Member], AsyncIterator[bytes]]
) -> AsyncIterator[bytes]:
    """The archive's bytes: each member's ``contents`` as it arrives, then the directory."""
    sink = _Sink()
    # No ``with``: should the download stop half-way, the archive must not try to write its
    # directory while a member is still open (zipfile raises then); it is simply dropped.
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
    for member in members:
        info = zipfile.ZipInfo(member.name, date_time=_zip_time(member.modified))
        info.file_size = member.size
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
        with archive.open(info, "w") as entry:
            async for chunk in contents(member):
                entry.write(chunk)
                yield sink.take()
        yield sink.take()
    archive.close()
    yield sink.take()
