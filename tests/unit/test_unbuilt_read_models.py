"""PROJECTOR_ABSENT's bound: the read models missing, unchanged, for longer than the limit."""

from __future__ import annotations

import pytest

from jobrunner.common.readmodelversion import READMODEL_VERSION
from jobrunner.services.api.readmodelgate import ReadModelState, UnbuiltReadModels

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
