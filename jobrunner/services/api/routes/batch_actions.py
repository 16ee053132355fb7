"""Acting on a batch: restart, pending, fail, archive, unarchive (``POST /api/batches/{id}/...``).

Each publishes events and answers ``202`` with the jobs it touched and the new attempts; the
semantics are in ``services/api/actions.py`` and the README ("Acting on batches and jobs").
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.status_codes import HTTP_202_ACCEPTED

from jobrunner.services.api import action_executor
from jobrunner.services.api.action_schemas import ActionOptions, BatchActionAccepted
from jobrunner.services.api.actions import Action
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.external import CallbackIssuer
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.security.openapi import error_spec

# The actions that make new attempts (external ones need callback tokens).
RESTARTS = frozenset({Action.RESTART, Action.PENDING})
_NOT_FOUND = {
    404: error_spec("No such batch, or not one of the caller's (BATCH_NOT_FOUND)."),
    503: error_spec(
        "The read models are behind (READ_MODEL_BEHIND) or NATS did not confirm "
        "(EVENT_STORE_UNAVAILABLE); send the same action again."
    ),
}
# The actions that make new attempts may name some of the batch's jobs (``job_ids``).
_RESTART_RESPONSES = {
    **_NOT_FOUND,
    422: error_spec("Bad options, or job_ids not of this batch (UNKNOWN_JOBS)."),
}


async def _act(
    request: Request[Any, Any, Any], batch_id: str, action: Action
) -> BatchActionAccepted:
    options = action_executor.decode_options(await request.body())
    callbacks = await CallbackIssuer.for_request(request) if action in RESTARTS else None
    async with action_executor.event_store_answers():
        return await action_executor.act_on_batch(
            ctx_of(request), batch_id, action, options, principal_of(request), callbacks
        )


class BatchActionController(Controller):
    path = "/api/batches"
    tags = ["batches"]

    @post(
        "/{batch_id:str}/restart",
        status_code=HTTP_202_ACCEPTED,
        summary="Run every job of the batch again, as new attempts",
        opt={"request_body": ActionOptions},
        responses=_RESTART_RESPONSES,
    )
    async def restart(self, request: Request[Any, Any, Any], batch_id: str) -> BatchActionAccepted:
        """Every latest attempt that is not pending gets a new attempt; a running one is
        cancelled first and its new attempt starts once it has ended."""
        return await _act(request, batch_id, Action.RESTART)

    @post(
        "/{batch_id:str}/pending",
        status_code=HTTP_202_ACCEPTED,
        summary="Run the jobs that failed or were cancelled again",
        opt={"request_body": ActionOptions},
        responses=_RESTART_RESPONSES,
    )
    async def pending(self, request: Request[Any, Any, Any], batch_id: str) -> BatchActionAccepted:
        """Latest attempts that failed or were cancelled get a new attempt; completed, running
        and pending ones are left alone."""
        return await _act(request, batch_id, Action.PENDING)

    @post(
        "/{batch_id:str}/fail",
        status_code=HTTP_202_ACCEPTED,
        summary="Stop the batch: it ends failed with the reason",
        opt={"request_body": ActionOptions},
        responses={
            **_NOT_FOUND,
            409: error_spec("The batch already ended (BATCH_FINISHED)."),
        },
    )
    async def fail(self, request: Request[Any, Any, Any], batch_id: str) -> BatchActionAccepted:
        """BatchFailed; every pending latest attempt is cancelled (never starts), then every
        running one (its process group is stopped)."""
        return await _act(request, batch_id, Action.FAIL)

    @post(
        "/{batch_id:str}/archive",
        status_code=HTTP_202_ACCEPTED,
        summary="Hide the batch from default lists",
        responses=_NOT_FOUND,
    )
    async def archive(self, request: Request[Any, Any, Any], batch_id: str) -> BatchActionAccepted:
        return await _act(request, batch_id, Action.ARCHIVE)

    @post(
        "/{batch_id:str}/unarchive",
        status_code=HTTP_202_ACCEPTED,
        summary="Show an archived batch in default lists again",
        responses=_NOT_FOUND,
    )
    async def unarchive(
        self, request: Request[Any, Any, Any], batch_id: str
    ) -> BatchActionAccepted:
        return await _act(request, batch_id, Action.UNARCHIVE)
