"""A delivery's stream sequence and pending count, read from its reply subject."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from jobrunner.common.subscription import position

REPLIES = [
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    "$JS.ACK.JOBS.c1.1.4711.12.1764590000000000000.3",
    # v2 adds the domain and the account hash after ACK, and a random token at the end
    "$JS.ACK._.ACCHASH.JOBS.c1.1.4711.12.1764590000000000000.0.rNd",
    "$JS.ACK.hub.ACCHASH.JOBS.c1.2.9.9.1764590000000000000.250.rNd",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_position_is_what_the_metadata_says(reply: str) -> None:
    """The feed's quick parse gives the same sequence and pending count as nats-py's metadata."""
    msg = Msg(None, "t.job.j.lines", reply, b"")  # type: ignore[arg-type]
    meta = msg.metadata
    assert position(msg) == (meta.sequence.stream, meta.num_pending)
