"""The log lines of ``GET /health``: what a load balancer polling every second makes of them.

A line per answer while something is wrong (every second, for the length of an outage) said
nothing the first did not. So the first answer that is not ok is logged at once; then at most
one line per ``health_log_seconds``, with the answers left out since the last line
(``since_last``); and one line when health is ok again, so the log says when the outage ended.
"""

from __future__ import annotations

import structlog

from jobrunner.common.logging import LogThrottle

log = structlog.get_logger()


class HealthLog:
    """One per API process (``ApiContext.health_log``): the answers told since the last line."""

    def __init__(self, interval: float) -> None:
        self._throttle = LogThrottle(interval)
        self._bad = False  # the last answer was not ok

    def answered(self, status: str, problems: list[str]) -> None:
        """Log (or count) one answer of ``status`` with these problem codes."""
        if not problems:
            if self._bad:
                self._bad = False
                fields = {"since_last": self._throttle.left_out} if self._throttle.left_out else {}
                log.info("health is ok again", **fields)
                # The next outage's first answer is logged at once, as this one's was.
                self._throttle = LogThrottle(self._throttle.interval)
            return
        self._bad = True
        left_out = self._throttle.admit()
        if left_out is None:
            return
        fields = {"since_last": left_out} if left_out else {}
        log.warning("health is not ok", status=status, problems=problems, **fields)
