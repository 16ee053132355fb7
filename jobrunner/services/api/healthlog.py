"""The log lines of ``GET /health``: what a load balancer polling every second makes of them.

A line per answer while something is wrong (every second, for the length of an outage) said
nothing the first did not. So at most one line per ``health_log_seconds``, with the answers left
out since the last line (``since_last``) and how many times health came back among them
(``flaps``). The period's clock runs on across recoveries: a health that flaps (bad, ok, bad, ok
each second) would otherwise log every "ok again" and every next "not ok" at once, a line a
second again. Three lines do not wait for the period: a status worse than any told since the
last full period (``degraded`` then ``unavailable``: an operator must hear of it now), a problem
code not told since then (NATS_TIMEOUT logged, ok, POSTGRES_TIMEOUT 20 s later: an outage that
begins and ends within the period would otherwise never be named), and "ok again" after an
outage that lasted at least the period (no flap: the log should say when it ended).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger()

# How bad each answer is: a worse one than any told is logged at once.
_SEVERITY = {"ok": 0, "degraded": 1, "unavailable": 2}


class HealthLog:
    """One per API process (``ApiContext.health_log``): the answers told since the last line."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last_line_at = -math.inf
        self._told_ok = True  # the last line said ok (or none was logged yet)
        self._worst_told = 0  # the worst severity a line told since the last full period
        self._problems_told: set[str] = set()  # the problem codes told since then
        self._bad_since: float | None = None  # when the current outage's first answer came
        self._left_out = 0
        self._flaps = 0  # recoveries among the answers left out

    def answered(self, status: str, problems: list[str]) -> None:
        """Log (or count) one answer of ``status`` with these problem codes."""
        now = self._clock()
        due = now - self._last_line_at >= self._interval
        if not problems:
            outage_began, self._bad_since = self._bad_since, None
            if self._told_ok and outage_began is None:
                return  # ok, and the log already says so
            long_outage = outage_began is not None and now - outage_began >= self._interval
            if not (due or long_outage):
                self._left_out += 1
                self._flaps += outage_began is not None
                return
            log.info("health is ok again", **self._counts())
            self._told(now, ok=True, severity=None)
            return
        if self._bad_since is None:
            self._bad_since = now
        severity = _SEVERITY.get(status, _SEVERITY["unavailable"])
        news = severity > self._worst_told or not self._problems_told.issuperset(problems)
        if not (due or news):
            self._left_out += 1
            return
        log.warning("health is not ok", status=status, problems=problems, **self._counts())
        if due:
            self._problems_told = set(problems)
        else:
            self._problems_told.update(problems)
        self._told(now, ok=False, severity=severity if due else max(severity, self._worst_told))

    def _counts(self) -> dict[str, Any]:
        counts = {"since_last": self._left_out, "flaps": self._flaps}
        return {name: count for name, count in counts.items() if count}

    def _told(self, now: float, ok: bool, severity: int | None) -> None:
        self._last_line_at, self._told_ok = now, ok
        self._left_out = self._flaps = 0
        if severity is not None:  # an "ok again" keeps the worst told: a flap's next "not ok"
            self._worst_told = severity  # is no news within the period
