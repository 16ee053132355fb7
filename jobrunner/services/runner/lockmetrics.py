"""Running and queued jobs per lock, read from the runner's view of the lock bucket at scrape.

Every runner watches every lease and queue of the bucket (``board.py``), so each reports the
installation's figures, not its own share: aggregate several runners with ``max``, not ``sum``.
Reading the board is a walk over in-memory dicts, no NATS request: a scrape answers while NATS
is away (with the last state the watch saw).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from jobrunner.common import metrics
from jobrunner.common.slots import key_safe
from jobrunner.services.runner.board import LockBoard


def lock_label(key: str, known_safe: dict[str, str]) -> str:
    """The lock label of a bucket key: ``slot.<lock>`` is a lock, ``job.<id>`` none."""
    if not key.startswith("slot."):
        return metrics.NO_LOCK
    return known_safe.get(key.removeprefix("slot."), metrics.OTHER)


class LockCollector:
    """The boards of the runners of this process (one, but for tests running several)."""

    def __init__(self) -> None:
        self._boards: weakref.WeakSet[LockBoard] = weakref.WeakSet()

    def add(self, board: LockBoard) -> None:
        self._boards.add(board)

    def collect(self) -> Iterable[Metric]:
        known_safe = {key_safe(lock): lock for lock in metrics.KNOWN.locks}
        running: Counter[str] = Counter()
        queued: Counter[str] = Counter()
        for board in list(self._boards):
            board_running = Counter(lock_label(key, known_safe) for key in list(board.slots))
            board_queued = Counter(
                {lock_label(key, known_safe): len(jobs) for key, jobs in list(board.queues.items())}
            )
            running |= board_running  # max: every board sees the same bucket
            queued |= board_queued
        yield _family("jobrunner_jobs_running", "Jobs holding a lock slot, by lock.", running)
        yield _family("jobrunner_jobs_queued", "Jobs waiting for a busy lock, by lock.", queued)


def _family(name: str, documentation: str, counts: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["lock"])
    for lock in sorted(metrics.KNOWN.locks | {metrics.NO_LOCK} | set(counts)):
        family.add_metric([lock], counts.get(lock, 0))
    return family


LOCKS = LockCollector()
REGISTRY.register(LOCKS)
