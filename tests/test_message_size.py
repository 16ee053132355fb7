"""messagesize counts a message as nats-server does: its payload and its header block.

Checked on both sides of the limit against a real server whose max_payload is small: the
largest message ``fits`` takes is stored, and one byte more (which nats-py lets through, as it
counts the payload alone) makes the server close the connection for good."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from jobrunner.common import messagesize
from jobrunner.embedded.nats import EmbeddedNats

MAX_PAYLOAD = 4096
HEADERS = {"Nats-Msg-Id": "an-event-id", "Nats-Expected-Last-Subject-Sequence": "0"}


def _small_server(tmp_path: Path) -> EmbeddedNats:
    server = EmbeddedNats(tmp_path / "nats", user="u", password="p")
    (server.store_dir / "auth.conf").write_text(
        f"max_payload: {MAX_PAYLOAD}\nauthorization {{ user: u\n password: p }}\n"
    )
    return server


async def test_the_largest_message_that_fits_passes_and_one_byte_more_would_close(
    tmp_path: Path,
) -> None:
    server = _small_server(tmp_path)
    server.start()
    try:
        nc = await nats.connect(server.url, allow_reconnect=False)
        assert nc.max_payload == MAX_PAYLOAD
        largest = b"x" * (MAX_PAYLOAD - messagesize.header_block_size(HEADERS))
        assert messagesize.fits(nc.max_payload, largest, HEADERS)
        await nc.publish("size.test", largest, headers=HEADERS)
        await nc.flush(timeout=5)
        assert nc.is_connected

        over = largest + b"x"
        assert not messagesize.fits(nc.max_payload, over, HEADERS)
        assert len(over) < nc.max_payload  # nats-py itself would send it
        await nc.publish("size.test", over, headers=HEADERS)
        async with asyncio.timeout(10):
            while not nc.is_closed:  # noqa: ASYNC110 - nats-py sets the state, nothing to await
                await asyncio.sleep(0.05)
        assert "maximum payload" in str(nc.last_error).lower()
    finally:
        server.stop()
