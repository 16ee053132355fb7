"""PROJECTOR_ABSENT's bound: the read models missing, unchanged, for longer than the limit;
REBUILD_ABANDONED's: a rebuild begun that no projector holds, unchanged, for as long."""

from __future__ import annotations

import pytest

from jobrunner.common.readmodelversion import READMODEL_VERSION
from jobrunner.services.api.readmodelgate import (
    REBUILD_RETRY_GAP_SECONDS,
    AbandonedRebuild,
    ReadModelState,
    UnbuiltReadModels,
)
from jobrunner.services.projector.outage import RETRY_PAUSE_MAX

LIMIT = 10.0
MISSING = ReadModelState(None)


def test_missing_read_models_name_the_projector_just_after_the_limit_not_at_it() -> None:
    """Seen missing at 100 s: nothing at 110 s (the limit), the sentence at 110.01 s."""
    seen = UnbuiltReadModels()
    assert seen.absent_projector(MISSING, LIMIT, now=100.0) is None
    assert seen.absent_projector(MISSING, LIMIT, now=100.0 + LIMIT) is None
    sentence = seen.absent_projector(MISSING, LIMIT, now=100.01 + LIMIT)
    assert sentence is not None
    assert sentence.startswith("No projector is at work: no read models have been made")


def test_a_change_starts_the_count_again() -> None:
    """An older version found (the projector at work on it) counts from when it was seen."""
    seen = UnbuiltReadModels()
    seen.absent_projector(MISSING, LIMIT, now=0.0)
    older = ReadModelState(0)
    assert seen.absent_projector(older, LIMIT, now=LIMIT + 1) is None
    sentence = seen.absent_projector(older, LIMIT, now=2 * LIMIT + 2)
    assert sentence is not None
    # An upgrade whose new API starts first: an older projector may well be at work.
    assert sentence.startswith(
        "No projector of this version has begun the rebuild of the read models (version 0 found"
    )


def test_a_rebuild_under_way_or_newer_tables_are_never_called_absent() -> None:
    """A rebuild with its own checkpoint (index builds may take minutes) and newer tables."""
    seen = UnbuiltReadModels()
    rebuilding = ReadModelState(0, rebuilt_seq=500)
    seen.absent_projector(rebuilding, LIMIT, now=0.0)
    assert seen.absent_projector(rebuilding, LIMIT, now=1000.0) is None
    newer = ReadModelState(10**6)
    seen.absent_projector(newer, LIMIT, now=0.0)
    assert seen.absent_projector(newer, LIMIT, now=1000.0) is None


@pytest.mark.parametrize(
    "between", [ReadModelState(READMODEL_VERSION), None], ids=["current", "postgres-unread"]
)
def test_current_read_models_or_an_unread_postgres_forget_the_first_look(
    between: ReadModelState | None,
) -> None:
    """Missing at 0 s, then current (or Postgres unread), missing again at 1000 s: the count
    starts at 1000 s, so no PROJECTOR_ABSENT at once."""
    seen = UnbuiltReadModels()
    seen.absent_projector(MISSING, LIMIT, now=0.0)
    assert seen.absent_projector(between, LIMIT, now=5.0) is None
    assert seen.absent_projector(MISSING, LIMIT, now=1000.0) is None
    assert seen.absent_projector(MISSING, LIMIT, now=1001.0 + LIMIT) is not None


# --- REBUILD_ABANDONED's bound: a rebuild begun, nobody holding its lock, no progress

ABANDONED = ReadModelState(0, rebuilt_seq=500, rebuilder=False)


def test_an_abandoned_rebuild_is_said_just_after_the_limit_not_at_it() -> None:
    """Seen unheld at 100 s: nothing at 110 s (the limit), the sentence at 110.01 s, naming
    where the rebuild stopped and the command that resumes it."""
    seen = AbandonedRebuild()
    assert seen.abandoned(ABANDONED, LIMIT, now=100.0) is None
    assert seen.abandoned(ABANDONED, LIMIT, now=100.0 + LIMIT) is None
    sentence = seen.abandoned(ABANDONED, LIMIT, now=100.01 + LIMIT)
    assert sentence is not None
    assert sentence.startswith("The rebuild of the read models stopped at event 500")
    assert "`jobrunner projector`" in sentence


@pytest.mark.parametrize(
    "back",
    [
        ReadModelState(0, rebuilt_seq=500, rebuilder=True),
        ReadModelState(READMODEL_VERSION),
        None,
    ],
    ids=["held-again", "current", "postgres-unread"],
)
def test_a_rebuilder_back_ends_it_at_once_and_the_count_starts_again(
    back: ReadModelState | None,
) -> None:
    """A projector holding the rebuild again (or the tables current, or Postgres unread) ends
    REBUILD_ABANDONED at the next look; unheld again later, it is counted from then."""
    seen = AbandonedRebuild()
    seen.abandoned(ABANDONED, LIMIT, now=0.0)
    assert seen.abandoned(ABANDONED, LIMIT, now=LIMIT + 1) is not None
    assert seen.abandoned(back, LIMIT, now=LIMIT + 2) is None
    assert seen.abandoned(ABANDONED, LIMIT, now=1000.0) is None
    assert seen.abandoned(ABANDONED, LIMIT, now=1001.0 + LIMIT) is not None


def test_progress_or_a_held_lock_or_no_rebuild_is_never_abandoned() -> None:
    """Progress (a rebuilder between its lock's sessions) counts anew; a held lock (index
    builds of minutes), no rebuild begun, or the lock unknown are never abandoned."""
    seen = AbandonedRebuild()
    seen.abandoned(ABANDONED, LIMIT, now=0.0)
    further = ReadModelState(0, rebuilt_seq=900, rebuilder=False)
    assert seen.abandoned(further, LIMIT, now=LIMIT + 1) is None
    for state in (
        ReadModelState(0, rebuilt_seq=500, rebuilder=True),
        ReadModelState(0),
        ReadModelState(0, rebuilt_seq=500),
    ):
        fresh = AbandonedRebuild()
        fresh.abandoned(state, LIMIT, now=0.0)
        assert fresh.abandoned(state, LIMIT, now=1000.0) is None


@pytest.mark.parametrize("limit", [0.5, 2.0])
def test_a_short_limit_never_calls_a_retry_pause_abandoned(limit: float) -> None:
    """``projector_stuck_seconds`` shorter than a projector's pause between two attempts at a
    rebuild: unheld just under REBUILD_RETRY_GAP_SECONDS is no abandoned rebuild (it used to be,
    past ``limit``); just over it, it is."""
    seen = AbandonedRebuild()
    seen.abandoned(ABANDONED, limit, now=0.0)
    assert seen.abandoned(ABANDONED, limit, now=REBUILD_RETRY_GAP_SECONDS - 0.01) is None
    assert seen.abandoned(ABANDONED, limit, now=REBUILD_RETRY_GAP_SECONDS + 0.01) is not None


def test_the_retry_gap_covers_the_projectors_longest_pause() -> None:
    """REBUILD_RETRY_GAP_SECONDS stays above the projector's longest pause between attempts."""
    assert REBUILD_RETRY_GAP_SECONDS > RETRY_PAUSE_MAX
