"""The projector stopped while it rebuilds older read models and Postgres is frozen (every
Postgres process SIGSTOPped: the cancel, the ROLLBACK and the closes are never answered): the stop
waits for the cancelled rebuild ``upgrade.rebuild_stop_seconds`` at most, then leaves it, said in
the log, its connections terminated. It used to wait for the thaw, holding the projector's stop."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import upgrade
from tests.tools.postgres_processes import freeze_postgres
from tests.tools.rebuild_in_place import older_state_on, rebuilding, stop_thawing_after
from tests.tools.rebuild_progress import rebuild_begun

pytestmark = pytest.mark.timeout(300)

LEFT = "the read-model rebuild (resumed from its checkpoint at the next start): left running"
# The fault just longer than the bound: thawed 2 s past it. The stop must have ended first.
PAST_THE_BOUND = 2.0


@pytest.mark.parametrize("left", [False, True], ids=["thawed-within-the-bound", "thawed-past-it"])
async def test_a_stop_mid_rebuild_with_postgres_frozen_ends_within_its_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, left: bool
) -> None:
    """Postgres thawed a third into the stop's bound: the rebuild's cancel completes, nothing
    said. Frozen until 2 s past the bound: the stop has ended before the thaw, the rebuild said
    left (its connections terminated)."""
    private = await older_state_on(settings, own_postgres, jobs=40, lines=1500, per_event=2)
    bound = upgrade.rebuild_stop_seconds(private)
    with capture_logs() as logs:
        async with rebuilding(private) as (task, stop):
            await rebuild_begun(private.database_url)
            assert not task.done(), "the rebuild ended before the freeze: make it bigger"
            frozen = freeze_postgres(own_postgres)
            ended_first = await stop_thawing_after(
                task, stop, frozen, bound + PAST_THE_BOUND if left else bound / 3
            )
    if left:
        assert ended_first, "the stop waited for the thaw"
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == (1 if left else 0), said
