"""Acting on one job: restart (a new attempt), archive, unarchive (``POST /api/jobs/{id}/...``)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from jobrunner.services.api import action_executor
from jobrunner.services.api.action_schemas import JobArchiveChanged, JobRestarted
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.external import CallbackIssuer
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.security.openapi import error_spec


class JobActionController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post(
        "/{job_id:str}/restart",
        status_code=HTTP_201_CREATED,
        summary="Run an ended job again, as a new attempt",
        responses={
            409: error_spec(
                "Its latest attempt is pending or running (JOB_ACTIVE), or the type's lock is "
                "busy and its policy is reject (SLOT_BUSY)."
            )
        },
    )
    async def restart(self, request: Request[Any, Any, Any], job_id: str) -> JobRestarted:
        """A new attempt of the job's latest attempt, once that one has ended."""
        options = action_executor.decode_options(await request.body())
        async with action_executor.event_store_answers():
            return await action_executor.restart_job(
                ctx_of(request),
                job_id,
                options,
                principal_of(request),
                await CallbackIssuer.for_request(request),
            )

    @post(
        "/{job_id:str}/archive",
        status_code=HTTP_202_ACCEPTED,
        summary="Hide the job from default lists",
    )
    async def archive(self, request: Request[Any, Any, Any], job_id: str) -> JobArchiveChanged:
        return await _set_archived(request, job_id, archived=True)

    @post(
        "/{job_id:str}/unarchive",
        status_code=HTTP_202_ACCEPTED,
        summary="Show an archived job in default lists again",
    )
    async def unarchive(self, request: Request[Any, Any, Any], job_id: str) -> JobArchiveChanged:
        return await _set_archived(request, job_id, archived=False)


async def _set_archived(
    request: Request[Any, Any, Any], job_id: str, archived: bool
) -> JobArchiveChanged:
    options = action_executor.decode_options(await request.body())
    async with action_executor.event_store_answers():
        return await action_executor.archive_job(
            ctx_of(request), job_id, archived, options, principal_of(request)
        )
