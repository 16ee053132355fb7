"""The Litestar application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin

from jobrunner.common.metrics import SERVICE_STARTED
from jobrunner.common.settings import Settings
from jobrunner.services.api import jobs_fastpath, security
from jobrunner.services.api.context import lifespan
from jobrunner.services.api.directwrite import App
from jobrunner.services.api.errors import EXCEPTION_HANDLERS
from jobrunner.services.api.notfoundpage import with_not_found_pages
from jobrunner.services.api.readmodelgate import refuse_unready
from jobrunner.services.api.reads import ReadRouter
from jobrunner.services.api.requestmetrics import RequestMetrics, time_unmatched
from jobrunner.services.api.routes import artifacts
from jobrunner.services.api.routes.audit import job_events
from jobrunner.services.api.routes.batch_actions import BatchActionController
from jobrunner.services.api.routes.batches import BatchController
from jobrunner.services.api.routes.batches_submit import batch_submit_routes
from jobrunner.services.api.routes.external import report_external_job
from jobrunner.services.api.routes.job_actions import JobActionController
from jobrunner.services.api.routes.jobs import JobController
from jobrunner.services.api.routes.logs import download_job_log, job_logs
from jobrunner.services.api.routes.meta import health, list_job_types, list_projector_failures
from jobrunner.services.api.routes.metrics import metrics
from jobrunner.services.api.routes.pages import UI_ROUTES, template_config
from jobrunner.services.api.routes.streams import job_event_stream
from jobrunner.services.api.routes.updates import job_updates
from jobrunner.services.api.routes.webhooks import job_webhooks

MAX_BODY_BYTES = 1024 * 1024


@asynccontextmanager
async def started(app: Litestar) -> AsyncIterator[None]:
    """The last of the start: ``jobrunner_service_started`` 1 once everything before it is up."""
    SERVICE_STARTED.set(1)
    yield


def create_app(settings: Settings) -> Litestar:
    # Keeps the server's send within reach of the SSE streams' direct writes (directwrite.py).
    app = App(
        route_handlers=[
            *security.ROUTES,
            JobController,
            BatchController,
            *batch_submit_routes(settings),
            JobActionController,
            BatchActionController,
            report_external_job,
            job_event_stream,
            list_job_types,
            health,
            metrics,
            list_projector_failures,
            # history and audit
            job_updates,
            job_logs,
            download_job_log,
            job_events,
            job_webhooks,
            *artifacts.ROUTES,
            # web UI
            *UI_ROUTES,
        ],
        lifespan=[lifespan(settings), security.access_lifespan(settings), started],
        middleware=[RequestMetrics, *security.MIDDLEWARE],
        before_send=[security.add_security_headers],
        # Read models of another version are never served (README "Upgrading").
        before_request=refuse_unready,
        exception_handlers=with_not_found_pages(EXCEPTION_HANDLERS),
        # Litestar's default would put a plain-text handler on the root logger, beside the
        # services' JSON (configure_logging routes every library's records itself).
        logging_config=None,
        request_max_body_size=MAX_BODY_BYTES,
        template_config=template_config(),
        openapi_config=OpenAPIConfig(
            title="jobrunner",
            version="0.1.0",
            path="/api/schema",
            # Litestar's routes for the documents, answering HEAD as every read route does.
            openapi_router=ReadRouter(
                "/api/schema", route_handlers=[], include_in_schema=False, dto=None, return_dto=None
            ),
            components=security.OPENAPI_COMPONENTS,
            security=security.OPENAPI_SECURITY,
            # Only the documents themselves: the interactive viewers load scripts from CDNs,
            # which jobrunner never depends on at run time (and its CSP would block).
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
        ),
        debug=False,
    )
    security.document_errors(app)
    time_unmatched(app)
    jobs_fastpath.install(app)
    return app
