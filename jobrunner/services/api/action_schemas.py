"""What the action endpoints accept and answer (HTTP schemas, not event contracts)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from jobrunner.common import bidicontrols
from jobrunner.services.api.schemas import ExternalCallback

MAX_REASON_CHARS = 2000
MAX_JOB_IDS = 10_000
MAX_JOB_ID_CHARS = 200

# No control characters, to the very end: ``$`` would let a final line break through. No
# bidirectional overrides either: a reason is shown on the batch's page, and one would turn the
# text after it around ("stop <U+202E> now" reads "stop won").
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f" + bidicontrols.CLASS + r"]*\Z"

Reason = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_REASON_CHARS, pattern=_NO_CONTROL)
]
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_JOB_ID_CHARS, pattern=_NO_CONTROL)]


class ActionOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The optional body of an action. ``reason`` (restart, pending, fail) is recorded in the
    events the action publishes; ``job_ids`` (restart, pending) limits it to those jobs of the
    batch (any attempt's id names its job)."""

    reason: Reason | None = None
    job_ids: Annotated[list[JobId], msgspec.Meta(max_length=MAX_JOB_IDS)] | None = None


class BatchActionAccepted(msgspec.Struct):
    batch_id: str
    action: str
    jobs: list[str]  # the latest attempts this action replaced or cancelled, in batch order
    attempts: list[str]  # the new attempts' job ids, in the same order as the jobs they replace
    # The new attempts of external jobs: their callback tokens and addresses, shown once.
    callbacks: list[ExternalCallback] = []


class JobRestarted(msgspec.Struct):
    id: str  # the new attempt's job id
    job_type: str
    status: str
    created_at: datetime
    attempt: int
    attempt_of: str
    restarted: str  # the attempt this one runs again
    batch_id: str | None = None
    # A new attempt of an external job: its worker reports with these (shown once).
    callback_token: str | None = None
    callback_url: str | None = None


class JobArchiveChanged(msgspec.Struct):
    id: str
    archived: bool
