"""Jobs this API process has just started whose request the projector has not applied yet.

A client that follows a job it has just started (``POST /api/jobs?wait=stored``, then the job's
SSE stream) asks before the read models show the job. What the stream needs of the job (the
stream sequence of its request, who requested it) is known here already, so the stream starts
without reading Postgres or JetStream first. An entry is forgotten once the projector has
applied its request (the read model answers from then on); the oldest go beyond ``MAX_POSTED``,
so memory stays bounded whatever the rate of POSTs.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

MAX_POSTED = 1000


class PostedJob(msgspec.Struct, frozen=True):
    seq: int  # the stream sequence of its JobRequested
    requested_by: str | None


class PostedJobs:
    def __init__(self, limit: int = MAX_POSTED) -> None:
        self._limit = limit
        self._jobs: OrderedDict[str, PostedJob] = OrderedDict()

    def add(self, job_id: str, job: PostedJob, applied: int) -> None:
        self._jobs[job_id] = job
        # Oldest first (in the order of their requests' sequences, near enough): drop those
        # the projector applied, and whatever is over the limit.
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            if oldest.seq > applied and len(self._jobs) <= self._limit:
                break
            self._jobs.popitem(last=False)

    def get(self, job_id: str, applied: int) -> PostedJob | None:
        """The job, while the projector has not applied its request (``applied``: how far it
        has, as far as this process knows)."""
        job = self._jobs.get(job_id)
        if job is not None and job.seq <= applied:
            del self._jobs[job_id]
            return None
        return job

    def __len__(self) -> int:
        return len(self._jobs)
