"""The web UI: server-rendered pages and the HTMX fragments they refresh themselves with.

Live data reaches the browser through the same JSON API and SSE streams every client uses; these
handlers only render HTML from the read models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import NotFoundException
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from jobrunner.common import bidicontrols
from jobrunner.common.jobtypes import JobType
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api import i18n, links, readmodels, schemas, security
from jobrunner.services.api.attempts import attempts_of
from jobrunner.services.api.batch_page_filters import filter_problems
from jobrunner.services.api.dependencies import ctx_of, find_batch, find_job
from jobrunner.services.api.reads import ReadRouter, get
from jobrunner.services.api.security.principal import optional_principal

HERE = Path(__file__).resolve().parent.parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
RECENT_LIMIT = 20
# The detail page shows a job's newest webhook attempts (GET /api/jobs/{id}/webhooks has more).
WEBHOOK_ATTEMPTS_SHOWN = 20
# The detail page carries the log's first lines, so its first screen needs no second request.
FIRST_LINES = 200
FIRST_LINES_MAX_CHARS = 200_000
ACTIVE = (JobStatus.RUNNING.value, JobStatus.PENDING.value)
FINISHED = tuple(s.value for s in JobStatus if s.is_terminal)
# The batch dialog's fields sit beside the New job dialog's on one page: their own ids.
BATCH_FORM_PREFIX = "batch-param"


def readable_json(value: Any) -> str:
    """JSON for people (a job's result on its page), written as the page's script writes it
    live (``JSON.stringify(value, null, 2)``): letters as they are, not ``\\u00e4`` as
    Jinja's ``tojson`` (made for scripts) writes them. Escaped by the template as any text."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def template_config() -> TemplateConfig:  # type: ignore[type-arg]
    from litestar.contrib.jinja import JinjaTemplateEngine

    def add_filters(engine: JinjaTemplateEngine) -> None:
        engine.engine.filters["readable_json"] = readable_json
        engine.engine.filters["isolated"] = bidicontrols.isolated

    return TemplateConfig(
        directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=add_filters
    )


static_router = create_static_files_router(
    path="/static",
    directories=[STATIC],
    include_in_schema=False,
    name="static",
    router_class=ReadRouter,
)


def in_schema_order(job: schemas.Job, job_type: JobType | None) -> list[tuple[str, Any]]:
    """The job's parameters in the order its type declares them (Postgres jsonb has its own)."""
    declared = list(job_type.parameters) if job_type else []
    names = [n for n in declared if n in job.parameters]
    names += sorted(n for n in job.parameters if n not in declared)
    return [(n, job.parameters[n]) for n in names]


def parameter_summary(job: schemas.Job, job_type: JobType | None, t: Any) -> list[tuple[str, str]]:
    """Parameters for one short line, label and value: ``PLZ-Filter: 4, Confidence-Level:
    none,low`` (the template isolates each value: a bidirectional override in one would turn
    the rest of the line around)."""
    parts = []
    for name, value in in_schema_order(job, job_type):
        if value in ("", None, []):
            continue
        param = job_type.parameters.get(name) if job_type else None
        label = (param.label if param else "") or name
        if isinstance(value, bool):
            value = t(f"bool.{str(value).lower()}")
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        parts.append((label, str(value)))
    return parts


def parameter_rows(job: schemas.Job, job_type: JobType | None, t: Any) -> list[tuple[str, str]]:
    rows = []
    for name, value in in_schema_order(job, job_type):
        param = job_type.parameters.get(name) if job_type else None
        label = (param.label if param else "") or name
        if isinstance(value, bool):
            shown = t(f"bool.{str(value).lower()}")
        elif isinstance(value, list):
            labels = {c.value: c.label or c.value for c in param.choices} if param else {}
            shown = ", ".join(labels.get(v) or str(v) for v in value) or "\u2013"
        elif param is not None and param.type == "enum":
            shown = next((c.label or c.value for c in param.choices if c.value == value), value)
        else:
            shown = str(value) if value != "" else "\u2013"
        rows.append((label, shown))
    return rows


def parameter_schemas(job_types: dict[str, JobType]) -> dict[str, Any]:
    """What the browser checks an imported row against: each type's parameters (no argv, env)."""
    return {
        name: {
            p_name: {k: v for k, v in msgspec.to_builtins(p).items() if k != "flag"}
            for p_name, p in jt.parameters.items()
        }
        for name, jt in job_types.items()
    }


def page(
    request: Request[Any, Any, Any], name: str, status_code: int = 200, **context: Any
) -> Template:
    """Render a template with the language, the translator and the job types at hand.

    Every page takes ``?lang=de|en`` (declared on the handlers, which the access middleware
    checks query parameters against); the choice is remembered in a cookie."""
    ctx = ctx_of(request)
    lang = i18n.language_of(request)
    t = i18n.translator(lang)
    titles = {n: jt.title or n for n, jt in ctx.job_types.items()}
    return Template(
        template_name=name,
        context={
            "lang": lang,
            "languages": i18n.LANGUAGES,
            "t": t,
            "texts": i18n.TEXT[lang],
            "job_types": ctx.job_types,
            "titles": titles,
            "summary": lambda job: parameter_summary(job, ctx.job_types.get(job.job_type), t),
            "parameter_schemas": lambda: parameter_schemas(ctx.job_types),
            "path": request.url.path,
            "csrf_token": security.csrf_token_for(request),
            **context,
        },
        cookies=i18n.remembered_choice(request),
        status_code=status_code,
    )


async def active_and_recent(request: Request[Any, Any, Any]) -> dict[str, Any]:
    pool = ctx_of(request).pool
    principal = optional_principal(request)
    owner = principal.owner if principal is not None else None  # own-jobs tokens see theirs
    active_rows, _ = await readmodels.list_jobs(
        pool, 10, readmodels.JobFilter(statuses=ACTIVE, requested_by=owner)
    )
    active = [readmodels.job_from_row(r) for r in active_rows]
    # Running before pending, then oldest first: the slot holder is the one that started first.
    active.sort(key=lambda j: (j.status != "running", j.created_at))
    rows, _ = await readmodels.list_jobs(
        pool, RECENT_LIMIT, readmodels.JobFilter(statuses=FINISHED, requested_by=owner)
    )
    return {"active": active, "recent": [readmodels.job_from_row(r) for r in rows]}


# The addresses people open, paste and share. A link passed on by mail or chat often comes back
# with parameters of its own (utm_source, fbclid): such a page shows itself instead of the API's
# 400 UNKNOWN_QUERY_PARAMETER as raw JSON (the access middleware reads this flag). The
# parameters a page takes (lang, the batch filters) are still checked; the fragments under /ui/
# and every /api route stay strict.
PAGE_OPT = {"ignores_unknown_query": True}


@get("/", include_in_schema=False)
async def index() -> Redirect:
    return Redirect("/jobs")


@get("/jobs", include_in_schema=False, name="jobs_page", opt=PAGE_OPT)
async def jobs_page(request: Request[Any, Any, Any], lang: str | None = None) -> Template:
    """PRD-005 2.1: the running job on top, the recent jobs below."""
    return page(request, "jobs.html", **await active_and_recent(request))


@get("/ui/active", include_in_schema=False)
async def active_fragment(request: Request[Any, Any, Any]) -> Template:
    return page(request, "_active.html", **await active_and_recent(request))


@get("/ui/recent", include_in_schema=False)
async def recent_fragment(request: Request[Any, Any, Any]) -> Template:
    return page(request, "_recent.html", **await active_and_recent(request))


@get("/ui/job-form/{job_type:str}", include_in_schema=False)
async def job_form_fragment(request: Request[Any, Any, Any], job_type: str) -> Template:
    """The parameter fields of one job type, generated from its schema."""
    found = ctx_of(request).job_types.get(job_type)
    if found is None:
        raise NotFoundException()
    return page(request, "_job_form.html", job_type=found)


@get("/ui/batch-job-form/{job_type:str}", include_in_schema=False)
async def batch_job_form_fragment(request: Request[Any, Any, Any], job_type: str) -> Template:
    """The same fields as the New job dialog's, with the batch dialog's ids."""
    found = ctx_of(request).job_types.get(job_type)
    if found is None:
        raise NotFoundException()
    return page(request, "_job_form.html", job_type=found, id_prefix=BATCH_FORM_PREFIX)


@get("/batches", include_in_schema=False, name="batches_page", opt=PAGE_OPT)
async def batches_page(
    request: Request[Any, Any, Any],
    lang: str | None = None,
    status: str | None = None,
    archived: str | None = None,
    job_type: str | None = None,
    search: str | None = None,
    created_from: str | None = None,
    created_to: str | None = None,
) -> Template:
    """Seed 003's job center: every batch with its counters, filtered, live.

    The rows come from ``GET /api/batches`` in the browser (the filters are that API's), so the
    first page and every live update take one path; the page carries the filters' values. A value
    the page cannot show answers 400 with the page saying so (batch_page_filters.py).
    """
    filters = {
        "status": status or "",
        "archived": archived or "false",
        "job_type": job_type or "",
        "search": search or "",
        "created_from": created_from or "",
        "created_to": created_to or "",
    }
    t = i18n.translator(i18n.language_of(request))
    problems = filter_problems(filters, ctx_of(request).job_types, t)
    return page(
        request,
        "batches.html",
        status_code=400 if problems else 200,
        filters=filters,
        filter_problems=problems,
    )


@get("/batches/{batch_id:str}", include_in_schema=False, name="batch_page", opt=PAGE_OPT)
async def batch_page(
    request: Request[Any, Any, Any], batch_id: str, lang: str | None = None
) -> Template:
    """One batch: its aggregates, its jobs page by page, and the actions on it (live).

    404 for a batch that does not exist or the caller may not see, as for a job; the rest comes
    from ``GET /api/batches/{id}`` in the browser, like every live update after it.
    """
    row = await find_batch(ctx_of(request), batch_id, optional_principal(request))
    return page(request, "batch_detail.html", batch_id=batch_id, batch_name=row["name"])


@get("/jobs/{job_id:str}", include_in_schema=False, name="job_page", opt=PAGE_OPT)
async def job_page(
    request: Request[Any, Any, Any], job_id: str, lang: str | None = None
) -> Template:
    """PRD-005 2.3: one job with its whole log, live while it runs."""
    ctx = ctx_of(request)
    job = readmodels.job_from_row(await find_job(ctx, job_id, optional_principal(request)))
    t = i18n.translator(i18n.language_of(request))
    attempts = []
    # Attempt fields come with the batch read model; a job of an older read model has none.
    if getattr(job, "attempt", None) is not None:
        first = getattr(job, "attempt_of", None) or job.id
        attempts = await attempts_of(ctx.pool, first, optional_principal(request))
    return page(
        request,
        "job_detail.html",
        job=job,
        attempts=attempts,
        parameters=parameter_rows(job, ctx.job_types.get(job.job_type), t),
        first_lines=await first_lines(ctx.pool, job_id),
        webhooks=readmodels.webhook_log(
            job_id, await readmodels.webhook_attempts(ctx.pool, job_id, WEBHOOK_ATTEMPTS_SHOWN)
        ),
        artifacts=[
            {
                "name": r["name"],
                "size": r["size"],
                "size_text": links.size_text(r["size"], i18n.language_of(request)),
                "url": links.artifact_url(job_id, r["name"]),
            }
            for r in await readmodels.list_artifacts(ctx.pool, job_id)
        ],
    )


async def first_lines(pool: Any, job_id: str) -> list[dict[str, Any]]:
    rows = await readmodels.log_lines_after(pool, job_id, 0, FIRST_LINES, readmodels.LineFilter())
    lines, size = [], 0
    for r in rows:
        size += len(r["text"])
        if size > FIRST_LINES_MAX_CHARS:
            break
        lines.append(
            {
                "seq": r["seq"],
                "stream": r["stream"],
                "level": r["level"],
                "timestamp": r["ts"].isoformat(),
                "text": r["text"],
            }
        )
    return lines


UI_ROUTES: list[ControllerRouterHandler] = [
    index,
    jobs_page,
    active_fragment,
    recent_fragment,
    job_form_fragment,
    batch_job_form_fragment,
    batches_page,
    batch_page,
    job_page,
    static_router,
]
