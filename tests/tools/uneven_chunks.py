"""Objects stored as another NATS client may store them: in chunks of many sizes, not all of
``max_chunk_size`` (short reads of a pipe or a socket), through nats-py's own object store."""

from __future__ import annotations

import io
from typing import Any

from nats.js import JetStreamContext, api

from jobrunner.common import artifactstore
from jobrunner.contracts.names import Names


class _ShortReads(io.RawIOBase):
    """``data`` read in the given sizes, however much is asked for: a pipe or a socket, as
    another NATS client's object store reads its source."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._at = data, list(sizes), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._sizes:
            return 0
        size = min(self._sizes.pop(0), len(buffer))
        buffer[:size] = self._data[self._at : self._at + size]
        self._at += size
        return size


async def stored_unevenly(
    js: JetStreamContext, names: Names, object_name: str, data: bytes, sizes: list[int]
) -> api.ObjectInfo:
    """``data`` stored as ``object_name`` by nats-py's own object store, in chunks of ``sizes``
    (its ``max_chunk_size`` the largest of them); checked to be stored so. A name already
    stored is replaced (nats-py purges its old chunks)."""
    store = await js.object_store(names.artifacts_bucket)
    options = api.ObjectMetaOptions(max_chunk_size=max(sizes))
    meta = api.ObjectMeta(name=object_name, options=options)
    await store.put(object_name, _ShortReads(data, sizes), meta=meta)  # type: ignore[arg-type]
    info = await artifactstore.object_info(js, names, object_name)
    assert (info.size, info.chunks) == (len(data), len(sizes))
    return info


def around_boundaries(sizes: list[int]) -> list[int]:
    """Every chunk's first byte, and the bytes either side of it, within the object."""
    total, starts = sum(sizes), [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    near = {at + step for at in starts for step in (-1, 0, 1)}
    return sorted(at for at in near if 0 <= at < total)
