"""The oldest nats-server jobrunner runs on, checked as every service declares its topology.

2.11.2: the slot leases are messages with their own TTL (``Nats-TTL``) in a bucket that leaves
a marker where one runs out (``limit_marker_ttl``), and every runner's lock board hears a dead
runner's lease expire by that marker. Per-message TTLs came in 2.11 (JetStream API level 1), but
2.11.0 and 2.11.1 leave a marker only where the bucket's own age limit removes a message, not
where a message's TTL does (nats-io/nats-server#6710, fixed in 2.11.2): there a dead runner's
job would end only by the sweep, and its expired lease would stay on every board. Measured with
every 2.11 release (bench/RESULTS.md, "Lease expiry markers by nats-server release, session
28"); on 2.10 the lock bucket cannot be made at all (nats-py refuses it with "limit marker TTLs
not supported by server").
"""

from __future__ import annotations

from nats.aio.client import ServerVersion

from jobrunner.common.refusal import StateRefused

OLDEST_SUPPORTED = (2, 11, 2)


class NatsServerTooOld(StateRefused):
    """The connected nats-server lacks what jobrunner needs: upgrading it is the one remedy, so
    the service refuses to start (``REFUSED_EXIT``) rather than being restarted in a loop."""

    code = "nats_server_too_old"

    def __init__(self, found: str) -> None:
        self.found = found
        self.needed = ".".join(map(str, OLDEST_SUPPORTED))
        super().__init__(
            f"{self.code}: nats-server {found} is too old; jobrunner needs nats-server "
            f"{self.needed} or newer (its slot leases need a marker where a per-message TTL "
            "runs out): upgrade the server"
        )


def require_supported(version: ServerVersion) -> None:
    """Raise ``NatsServerTooOld`` when ``version`` is older than ``OLDEST_SUPPORTED``. A version
    that cannot be read (none announced, or not semantic) is let through: the server decides."""
    try:
        known = (version.major, version.minor, version.patch)
    except ValueError:
        return
    if known != (0, 0, 0) and known < OLDEST_SUPPORTED:
        raise NatsServerTooOld(f"{known[0]}.{known[1]}.{known[2]}")
