"""What every job submission checks, whether one job (POST /api/jobs) or a batch of them.

One place decides whether a job type exists and whether its parameters are valid, so a job that
POST /api/jobs refuses is refused in a batch too, with the same codes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from jobrunner.common.jobtypes import JobType, validate_parameters


class UnknownJobType(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"There is no job type {name!r}; GET /api/job-types lists them.")
        self.name = name


def check_job(
    job_types: dict[str, JobType], job_type: str, parameters: Any
) -> tuple[JobType, dict[str, Any]]:
    """The job type and the complete, valid parameters (defaults filled in).

    Raises UnknownJobType, or jobtypes.ParameterError naming every bad parameter.
    """
    known = job_types.get(job_type)
    if known is None:
        raise UnknownJobType(job_type)
    return known, validate_parameters(known, parameters)


def job_fingerprint(job_type: str, parameters: dict[str, Any]) -> str:
    """A hash of what one job asks for (its checked parameters: spelling and defaults left out
    do not change it), for the ``Idempotency-Key`` of POST /api/jobs."""
    canonical = msgspec.json.encode(["job", job_type, parameters], order="sorted")
    return hashlib.sha256(canonical).hexdigest()
