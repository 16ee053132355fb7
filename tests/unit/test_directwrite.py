"""The HTTP chunks a viewer's connection is written straight."""

from __future__ import annotations

import pytest

from jobrunner.services.api.directwrite import http_chunk


def test_a_body_is_framed_as_one_chunk_of_a_chunked_response() -> None:
    """A body goes out as ``<size in hex>\\r\\n<body>\\r\\n``."""
    assert http_chunk(b"data: x\n\n" * 2) == b"12\r\ndata: x\n\ndata: x\n\n\r\n"


def test_an_empty_body_is_refused_rather_than_ending_the_response() -> None:
    """An empty chunk (``0\\r\\n\\r\\n``) is the end of a chunked response: a viewer's stream
    would end without its job's end, so framing one is a bug, refused loudly."""
    with pytest.raises(ValueError, match="empty"):
        http_chunk(b"")
