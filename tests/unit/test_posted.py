"""The API's memory of jobs it just started: found until projected, and bounded."""

from __future__ import annotations

from jobrunner.services.api.posted import PostedJob, PostedJobs


def test_a_posted_job_is_known_until_the_projector_applied_its_request() -> None:
    """Its stream needs no read while the read models lag; afterwards the read model answers."""
    posted = PostedJobs()
    posted.add("a", PostedJob(seq=10, requested_by="ops"), applied=9)
    assert posted.get("a", applied=9) == PostedJob(seq=10, requested_by="ops")
    assert posted.get("a", applied=10) is None
    assert posted.get("a", applied=9) is None  # forgotten for good
    assert len(posted) == 0


def test_jobs_the_projector_applied_are_dropped_as_new_ones_come() -> None:
    """Entries nobody asked for again do not stay once their requests are projected."""
    posted = PostedJobs()
    for seq in range(1, 6):
        posted.add(f"job{seq}", PostedJob(seq=seq, requested_by=None), applied=0)
    posted.add("job6", PostedJob(seq=6, requested_by=None), applied=4)
    assert len(posted) == 2
    assert posted.get("job5", applied=4) is not None


def test_at_most_the_limit_is_kept_the_oldest_going_first() -> None:
    """However many jobs are started, memory holds only the newest few."""
    posted = PostedJobs(limit=3)
    for seq in range(1, 11):
        posted.add(f"job{seq}", PostedJob(seq=seq, requested_by=None), applied=0)
    assert len(posted) == 3
    assert posted.get("job7", applied=0) is None
    assert posted.get("job8", applied=0) is not None
