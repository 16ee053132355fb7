"""The size nats-server counts for a message: its payload *and* its header block.

nats-py refuses a payload over ``max_payload`` before sending, but counts the payload alone; the
server counts the headers too (HPUB's total size) and answers a message over it with
``-ERR 'Maximum Payload Violation'``, which nats-py treats as fatal: the connection is closed for
good. Every headered publish whose size depends on input checks ``fits`` first."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS

# "NATS/1.0\r\n" before the headers and "\r\n" after them, as nats-py writes the block.
_HEADER_BLOCK_FRAME = len(b"NATS/1.0\r\n") + len(b"\r\n")


def header_block_size(headers: dict[str, str] | None) -> int:
    """Bytes of the header block nats-py sends for ``headers`` (0 without headers)."""
    if headers is None:
        return 0
    size = _HEADER_BLOCK_FRAME
    for key, value in headers.items():
        if key.strip():  # nats-py skips empty keys and strips keys and values
            size += len(key.strip().encode()) + len(b": ") + len(value.strip().encode()) + 2
    return size


def fits(max_payload: int, data: bytes, headers: dict[str, str] | None) -> bool:
    """True when the server takes a message of ``data`` with ``headers`` under ``max_payload``."""
    return header_block_size(headers) + len(data) <= max_payload


def check_fits(nc: NATS, data: bytes, headers: dict[str, str] | None) -> None:
    """Refuse, before anything is sent, a message the server would refuse by closing the
    connection: nats-py's own ``MaxPayloadError``, which callers already turn into a refusal."""
    if not fits(nc.max_payload, data, headers):
        raise nats.errors.MaxPayloadError
