"""Reading a batch request: every job checked before anything is published.

Body: ``{"batch_name": "...", "jobs": [{"job_type": "...", "parameters": {...}, "webhook": {...}},
...]}`` (``webhook`` optional, as for POST /api/jobs), or the
same wrapped as ``{"batch": {...}}`` (seed 004). A batch is all or nothing, so one bad job refuses
the whole batch: ``422 INVALID_BATCH`` lists each problem with the job's index and the field.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from jobrunner.common import bidicontrols
from jobrunner.common.jobtypes import JobType, ParameterError
from jobrunner.contracts import events
from jobrunner.services.api import schemas
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.submission import UnknownJobType, check_job
from jobrunner.services.api.webhook_requests import webhook_problems

MAX_NAME_CHARS = 200
# The problems listed in one answer; the rest are counted (a 10,000-job batch of one broken
# template would otherwise answer megabytes of the same sentence).
MAX_LISTED_ERRORS = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BATCH_FIELDS = ("batch_name", "jobs")
_JOB_FIELDS = ("job_type", "parameters", "webhook")


class BatchProblem(msgspec.Struct, frozen=True):
    """One reason the batch is refused. ``index`` is the job's place (None: the batch itself)."""

    index: int | None
    field: str
    code: str
    message: str


class PlannedJob(msgspec.Struct, frozen=True):
    job_type: JobType
    parameters: dict[str, Any]
    webhook: events.WebhookTarget | None = None  # notified when the job ends (README "Webhooks")


class BatchPlan(msgspec.Struct, frozen=True):
    """A batch whose every job is valid: what will be published."""

    batch_name: str
    jobs: list[PlannedJob]

    @property
    def job_types(self) -> list[str]:
        return sorted({job.job_type.name for job in self.jobs})

    def fingerprint(self) -> str:
        """A hash of what the batch asks for, the same however the JSON was spelled (key order,
        spacing, defaults left out): an Idempotency-Key retry must send the same batch."""
        canonical = msgspec.json.encode(
            [
                self.batch_name,
                [
                    # A job's webhook only when it has one: the hash of a batch without webhooks
                    # stays what it was before jobs could name one.
                    [j.job_type.name, j.parameters, *([j.webhook] if j.webhook else [])]
                    for j in self.jobs
                ],
            ],
            order="sorted",
        )
        return hashlib.sha256(canonical).hexdigest()


def plan_batch(raw: Any, job_types: dict[str, JobType], max_jobs: int) -> BatchPlan:
    """Check a decoded request body; raises ApiError ``422 INVALID_BATCH`` naming every problem."""
    problems: list[BatchProblem] = []
    if isinstance(raw, dict) and set(raw) == {"batch"} and isinstance(raw["batch"], dict):
        raw = raw["batch"]  # seed 004's wrapper
    if not isinstance(raw, dict):
        _refuse([BatchProblem(None, "", "NOT_AN_OBJECT", "The batch must be a JSON object.")])
    for name in raw:
        if name not in _BATCH_FIELDS:
            problems.append(
                BatchProblem(None, str(name), "UNKNOWN_FIELD", "A batch has no such field.")
            )
    name = raw.get("batch_name")
    name_problem = _name_problem(name)
    if name_problem:
        problems.append(BatchProblem(None, "batch_name", *name_problem))
    jobs = raw.get("jobs")
    if not isinstance(jobs, list):
        code, message = (
            ("REQUIRED", "The batch needs a list of jobs.")
            if jobs is None
            else ("INVALID_TYPE", "jobs must be a list of jobs.")
        )
        _refuse([*problems, BatchProblem(None, "jobs", code, message)])
    if not jobs:
        _refuse([*problems, BatchProblem(None, "jobs", "EMPTY", "A batch needs at least one job.")])
    if len(jobs) > max_jobs:
        message = (
            f"A batch may hold at most {max_jobs} jobs (batch_max_jobs); this one has "
            f"{len(jobs)}. Split it into several batches."
        )
        _refuse([*problems, BatchProblem(None, "jobs", "TOO_MANY_JOBS", message)])
    planned: list[PlannedJob] = []
    for index, job in enumerate(jobs):
        checked = _check_job(index, job, job_types, problems)
        if checked is not None:
            planned.append(checked)
    if problems:
        _refuse(problems)
    assert isinstance(name, str)
    return BatchPlan(batch_name=name, jobs=planned)


def _name_problem(name: Any) -> tuple[str, str] | None:
    if name is None:
        return "REQUIRED", "The batch needs a batch_name."
    if not isinstance(name, str):
        return "INVALID_TYPE", "batch_name must be a string."
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        return "INVALID_LENGTH", f"batch_name must be 1 to {MAX_NAME_CHARS} characters long."
    if _CONTROL.search(name):
        return "INVALID_CHARACTER", "batch_name must not contain control characters."
    if (bidi := bidicontrols.first_in(name)) is not None:
        # Shown on /batches and in every job's row, it would turn the text after it around.
        return (
            "INVALID_CHARACTER",
            f"batch_name must not contain {bidicontrols.NAMED}: it holds {bidi}, which makes "
            "the name read as other text.",
        )
    return None


def _check_job(
    index: int, job: Any, job_types: dict[str, JobType], problems: list[BatchProblem]
) -> PlannedJob | None:
    if not isinstance(job, dict):
        problems.append(
            BatchProblem(index, "job", "NOT_AN_OBJECT", "Each job must be a JSON object.")
        )
        return None
    found = len(problems)
    for name in job:
        if name not in _JOB_FIELDS:
            problems.append(
                BatchProblem(index, str(name), "UNKNOWN_FIELD", "A job has no such field.")
            )
    job_type = job.get("job_type")
    if not isinstance(job_type, str):
        code, message = (
            ("REQUIRED", "Each job needs a job_type.")
            if job_type is None
            else ("INVALID_TYPE", "job_type must be a string.")
        )
        problems.append(BatchProblem(index, "job_type", code, message))
        return None
    try:
        known, parameters = check_job(job_types, job_type, job.get("parameters"))
    except UnknownJobType as exc:
        problems.append(BatchProblem(index, "job_type", "UNKNOWN_JOB_TYPE", str(exc)))
        return None
    except ParameterError as exc:
        problems.extend(BatchProblem(index, e.field, e.code, e.message) for e in exc.errors)
        return None
    webhook = _check_webhook(index, job.get("webhook"), problems)
    if len(problems) > found:
        return None
    return PlannedJob(job_type=known, parameters=parameters, webhook=webhook)


def _check_webhook(
    index: int, raw: Any, problems: list[BatchProblem]
) -> events.WebhookTarget | None:
    """A job's ``webhook`` (as POST /api/jobs takes it), its problems added under its index."""
    if raw is None:
        return None
    try:
        given = msgspec.convert(raw, schemas.WebhookRequest)
    except msgspec.ValidationError as exc:
        problems.append(
            BatchProblem(
                index, "webhook", "INVALID_TYPE", f"webhook must be {{url, headers}}: {exc}"
            )
        )
        return None
    target, found = webhook_problems(given)
    problems.extend(BatchProblem(index, p.field, p.code, p.message) for p in found)
    return target


def _refuse(problems: list[BatchProblem]) -> Any:
    listed = problems[:MAX_LISTED_ERRORS]
    jobs = sorted({p.index for p in problems if p.index is not None})
    where = f" ({len(jobs)} of its jobs)" if jobs else ""
    raise ApiError(
        422,
        "INVALID_BATCH",
        f"The batch was not started: {len(problems)} problem(s){where}; nothing of it runs "
        "until every job is valid.",
        errors=[msgspec.to_builtins(p) for p in listed],
        more_errors=len(problems) - len(listed),
    )
