"""Which bytes of a download a client asked for: one ``Range: bytes=...`` (RFC 9110 section 14).

A download that drops resumes where it stopped (``bytes=a-``) instead of from byte 0. One range
is served; a header the server may ignore by the RFC is ignored and the whole file served (200):
another unit, a list of several ranges, a range that is no range (``5-1``, ``abc``, digits other
than ASCII ones), and any suffix of an empty file (satisfiable, but no 206 can describe zero
bytes). Only a well-formed range that starts past the end (or a suffix of length 0) is
unsatisfiable (416). Numbers of any length are compared exactly: a number too long for ``int``
(Python refuses over 4,300 digits) is past any file's end, which is what it means.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import NamedTuple

_RANGE = re.compile(r"[ \t]*([0-9]*)-([0-9]*)[ \t]*")
# Longer numbers are larger than any size an artifact may have (its size fits in 20 digits):
# kept as text past this, so int() never meets a number it refuses.
_MAX_DIGITS = 30
_PAST_ANY_SIZE: int = 10**_MAX_DIGITS


class ByteRange(NamedTuple):
    """Bytes ``start`` to ``end`` of a file of ``size`` bytes, both ends included (as HTTP)."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class RangeNotSatisfiable(Exception):
    """The range is well formed but holds no byte of the file (416)."""


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks for within ``size`` bytes; ``None`` for the whole file
    (no header, or one to ignore). Raises :class:`RangeNotSatisfiable`."""
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip(" \t").lower() != "bytes" or "," in spec:
        return None
    found = _RANGE.fullmatch(spec)
    if found is None:
        return None
    first_digits, last_digits = (_significant(digits) for digits in found.groups())
    if not first_digits:
        if not last_digits:
            return None
        last = _number(last_digits)
        if last == 0:
            raise RangeNotSatisfiable
        if size == 0:
            return None  # satisfiable (RFC 9110 section 14.1.1), but no Content-Range says so
        return ByteRange(max(size - last, 0), size - 1, size)
    if last_digits and _order(last_digits) < _order(first_digits):
        return None  # no range at all: ignored, as the RFC allows
    first = _number(first_digits)
    if first >= size:
        raise RangeNotSatisfiable
    last = size - 1 if not last_digits else min(_number(last_digits), size - 1)
    return ByteRange(first, last, size)


def _significant(digits: str) -> str:
    """``digits`` without leading zeros (``"0"`` stays); empty when there are none."""
    return (digits.lstrip("0") or "0") if digits else ""


def _order(significant: str) -> tuple[int, str]:
    """Sorts numbers of any length as their values sort."""
    return len(significant), significant


def _number(significant: str) -> int:
    if len(significant) > _MAX_DIGITS:
        return _PAST_ANY_SIZE  # past any size: only compared with sizes from here on
    return int(significant)


def if_none_match_holds(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 section 13.1.2): one
    of its comma-separated tags with or without ``W/``, or ``*``."""
    if if_none_match is None:
        return False
    tags = {tag.strip(" \t").removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def if_range_holds(if_range: str | None, etag: str) -> bool:
    """Whether the Range may be served: no ``If-Range``, or one naming this strong ``etag``
    (a weak tag or a date never matches: the file is then sent whole, as the RFC asks)."""
    return if_range is None or if_range.strip(" \t") == etag


async def first_bytes(
    chunks: AsyncGenerator[bytes, None], length: int
) -> AsyncGenerator[bytes, None]:
    """The first ``length`` bytes of ``chunks`` (a range's: the file read from the range's first
    byte, from ``artifactstore.resume_point``). Reading stops after them, and ``chunks`` is
    closed (its consumer goes) either way."""
    try:
        left = length
        async for chunk in chunks:
            if len(chunk) >= left:
                yield chunk if len(chunk) == left else chunk[:left]
                return
            left -= len(chunk)
            yield chunk
    finally:
        await chunks.aclose()
