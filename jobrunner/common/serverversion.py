"""The oldest nats-server jobrunner runs on, checked as every service declares its topology.

2.11.0: the slot leases are messages with their own TTL (``Nats-TTL``) in a bucket that leaves
a marker when one expires (``limit_marker_ttl``), and both came in 2.11 (JetStream API level 1).
On 2.10 the lock bucket cannot be made (nats-py refuses it with "limit marker TTLs not supported
by server"), and a bucket that ignored the TTLs would keep a dead runner's lease for ever. Run
against 2.10.26 (refused here), 2.11.0, 2.11.11 and 2.12.4 (the services start and run jobs,
artifacts and replays): bench/RESULTS.md, "Older nats-server, session 22".
"""

from __future__ import annotations

from nats.aio.client import ServerVersion

from jobrunner.common.refusal import StateRefused

OLDEST_SUPPORTED = (2, 11, 0)


class NatsServerTooOld(StateRefused):
    """The connected nats-server lacks what jobrunner needs: upgrading it is the one remedy, so
    the service refuses to start (``REFUSED_EXIT``) rather than being restarted in a loop."""

    code = "nats_server_too_old"

    def __init__(self, found: str) -> None:
        self.found = found
        self.needed = ".".join(map(str, OLDEST_SUPPORTED))
        super().__init__(
            f"{self.code}: nats-server {found} is too old; jobrunner needs nats-server "
            f"{self.needed} or newer (its slot leases use per-message TTLs): upgrade the server"
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
