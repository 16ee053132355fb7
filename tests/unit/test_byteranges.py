"""Which bytes a download's Range asks for (services/api/byteranges.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.services.api.byteranges import (
    ByteRange,
    RangeNotSatisfiable,
    first_bytes,
    if_none_match_holds,
    if_range_holds,
    requested_range,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", ByteRange(0, 9, 100)),
        ("bytes=90-", ByteRange(90, 99, 100)),
        ("bytes=-10", ByteRange(90, 99, 100)),
        ("bytes=-1000", ByteRange(0, 99, 100)),
        ("bytes=50-1000", ByteRange(50, 99, 100)),
        ("Bytes=0-0", ByteRange(0, 0, 100)),
        ("bytes=0-" + "9" * 40, ByteRange(0, 99, 100)),
        ("bytes=00007-0008", ByteRange(7, 8, 100)),
    ],
)
def test_one_range_is_served(header: str, expected: ByteRange) -> None:
    """A single range, open or suffix, is cut to the file's end."""
    assert requested_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "bytes=0-1,5-9",  # several ranges: the whole file
        "items=0-1",
        "bytes=5-1",
        "bytes=abc",
        "bytes=-",
        "bytes=",
        "bytes=\u0661-\u0662",
        "bytes=" + "9" * 50 + "-" + "9" * 49,  # the end before the start, both huge
    ],
)
def test_what_is_no_single_range_serves_the_whole_file(header: str | None) -> None:
    """Another unit, several ranges or no range at all: the whole file (None)."""
    assert requested_range(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-0", 0)],
)
def test_a_range_with_no_byte_of_the_file_is_unsatisfiable(header: str, size: int) -> None:
    """Past the end, a zero suffix, a range from a byte of an empty file: 416."""
    with pytest.raises(RangeNotSatisfiable):
        requested_range(header, size)


def test_a_suffix_of_an_empty_file_serves_it_whole() -> None:
    """Satisfiable by RFC 9110 section 14.1.1, but a 206 cannot describe zero bytes: the whole
    (empty) file."""
    assert requested_range("bytes=-5", 0) is None


def test_a_number_longer_than_int_reads_is_past_the_end() -> None:
    """5,000 digits are past any end, not a crash of int()."""
    with pytest.raises(RangeNotSatisfiable):
        requested_range("bytes=" + "9" * 5000 + "-", 100)
    assert requested_range("bytes=-" + "9" * 5000, 100) == ByteRange(0, 99, 100)


@given(st.text(max_size=60), st.integers(0, 10**6))
def test_any_header_gives_a_range_within_the_file_or_none(header: str, size: int) -> None:
    """Whatever the header holds, the answer is the whole file, a range inside it, or 416."""
    try:
        found = requested_range(header, size)
    except RangeNotSatisfiable:
        return
    if found is not None:
        assert 0 <= found.start <= found.end < size == found.size


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ("*", True),
        ('"x"', False),
        ('"ab"', False),
        ("", False),
    ],
)
def test_if_none_match_names_the_tag_weakly_among_others(header: str | None, matches: bool) -> None:
    """Any listed tag, weak or strong, or `*` matches the ETag (RFC 9110 section 13.1.2)."""
    assert if_none_match_holds(header, '"abc"') is matches


def test_if_range_holds_only_for_the_same_strong_tag() -> None:
    """The ETag itself resumes; a weak form of it, another tag or a date does not."""
    assert if_range_holds(None, '"abc"')
    assert if_range_holds('"abc"', '"abc"')
    assert not if_range_holds('W/"abc"', '"abc"')
    assert not if_range_holds('"abd"', '"abc"')
    assert not if_range_holds("Sat, 05 Dec 2026 07:00:00 GMT", '"abc"')


class _Chunks:
    """``data`` in chunks of ``size`` bytes; counts the chunks read and sees it closed."""

    def __init__(self, data: bytes, size: int) -> None:
        self.closed = False
        self.read = 0
        self._data, self._size = data, size

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            for at in range(0, len(self._data), self._size):
                self.read += 1
                yield self._data[at : at + self._size]
        finally:
            self.closed = True


async def _joined(parts: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in parts])


@given(st.binary(min_size=1, max_size=400), st.integers(1, 50), st.integers(1, 400))
def test_a_range_ends_after_its_length_and_reads_no_further(
    data: bytes, chunk: int, length: int
) -> None:
    """However the bytes from the range's start are chunked, exactly ``length`` of them are
    served (all there are, if fewer), and the chunks' reader is closed; no chunk past the
    range's end is read."""
    source = _Chunks(data, chunk)
    served = asyncio.run(_joined(first_bytes(source.chunks(), length)))
    assert served == data[:length]
    assert source.closed
    assert source.read == (min(length, len(data)) - 1) // chunk + 1
