"""A job's artifacts: the list, one file, and all of them as a ZIP (seed 004's download-archive).

Files come from the artifacts object store in chunks (``artifactstore.read_chunks``): a download
of any size takes a bounded amount of the API's memory, and any API instance serves any job's
artifacts. Which artifacts a job has comes from the read model (the ``artifacts`` table); who may
see them is who may see the job.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import structlog
from litestar import Request, Response, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream
from litestar.status_codes import HTTP_201_CREATED
from nats.errors import Error as NatsError
from nats.js import api

from jobrunner.common import artifactnames, artifactstore
from jobrunner.common.lastevent import last_readable
from jobrunner.contracts import events
from jobrunner.services.api import artifactupload, byteranges, external, readmodels, schemas
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.dependencies import ctx_of, find_job
from jobrunner.services.api.errors import ApiError, try_again_later
from jobrunner.services.api.links import archive_url, artifact_url
from jobrunner.services.api.queryparams import Query
from jobrunner.services.api.reads import get, is_head
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.security.openapi import error_spec
from jobrunner.services.api.ziparchive import Member, zip_stream

log = structlog.get_logger()

_DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"}
# A file is served as its own type (an .html or .svg a job left as text/html, image/svg+xml) on the
# API's origin: besides ``attachment``, a sandbox, so a browser that showed it anyway would run
# it without the origin's cookies or API. (The security middleware keeps a response's own
# policy, so the web pages' policy is not added to it.)
_FILE_POLICY = {"Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'"}


def _artifact_from_row(job_id: str, row: Any) -> schemas.Artifact:
    return schemas.Artifact(
        name=row["name"],
        size=row["size"],
        content_type=row["content_type"],
        sha256=row["sha256"],
        stored_at=row["stored_at"],
        url=artifact_url(job_id, row["name"]),
    )


_DOWNLOAD_ROUTE = "/api/jobs/{job_id:str}/artifacts/{name:path}"
_UPLOAD_ROUTE = "/api/external/jobs/{job_id:str}/artifacts/{name:path}"


def _segments_before_name(route: str) -> int:
    """How many path segments come before ``{name:path}`` in ``route`` (4 in the download's)."""
    return len([p for p in route.partition("{name:path}")[0].split("/") if p])


def _name_as_sent(request: Request[Any, Any, Any], name: str, route: str) -> str:
    """The ``{name:path}`` parameter, refused when it is not what the client sent: the path the
    routing sees has ``//`` collapsed and a trailing ``/`` stripped, so ``a//b`` or ``dir/``
    would otherwise be stored (and served) silently as ``a/b`` or ``dir``. Checked on the name's
    part of the path as it came (after the segments before ``{name:path}`` in ``route``, so a
    ``//`` before the name is no concern of the name's), decoded (``%2F%2F`` is ``//`` too). uvicorn
    always gives the raw path; a server that does not gets no check (its decoded path says
    nothing of the slashes sent)."""
    raw = request.scope.get("raw_path")
    if raw is None:
        return name.removeprefix("/")
    root_path = request.scope.get("root_path") or ""
    before = _segments_before_name(route) + len([p for p in root_path.split("/") if p])
    sent = unquote_to_bytes(_after_segments(raw, before))
    if b"//" in sent or sent.startswith(b"/") or sent.endswith(b"/"):
        raise ApiError(
            400,
            "INVALID_ARTIFACT_NAME",
            "That is no artifact name: the name has an empty part (a '//' or a trailing '/').",
        )
    return name.removeprefix("/")


def _after_segments(raw_path: bytes, count: int) -> bytes:
    """What follows the first ``count`` segments of ``raw_path`` and the ``/`` after them
    (empty segments among them skipped): ``/api//jobs/x/artifacts/a//b`` after 4 is ``a//b``."""
    rest = raw_path
    for _ in range(count):
        rest = rest.lstrip(b"/").partition(b"/")[2]
    return rest


def _unavailable(exc: Exception) -> ApiError:
    log.warning("artifact store unreachable", error=repr(exc))
    return try_again_later(
        "ARTIFACTS_UNAVAILABLE",
        "The artifact store (NATS) did not answer; try again in a moment.",
        retry_after=2,
    )


async def _object(ctx: ApiContext, job_id: str, row: Any) -> api.ObjectInfo:
    try:
        return await artifactstore.object_info(ctx.js, ctx.names, row["object_name"])
    except artifactstore.ObjectMissing:
        raise ApiError(
            410,
            "ARTIFACT_GONE",
            f"The artifact {row['name']!r} of job {job_id!r} is no longer stored "
            "(it aged out with the stream's max age).",
        ) from None
    except Exception as exc:
        raise _unavailable(exc) from None


def _chunks(
    ctx: ApiContext,
    info: api.ObjectInfo,
    at: artifactstore.ResumePoint = artifactstore.FROM_THE_START,
) -> AsyncGenerator[bytes, None]:
    return artifactstore.read_chunks(
        ctx.js, ctx.names, info, ctx.settings.artifact_read_idle_seconds, at
    )


async def _resume_point(
    ctx: ApiContext, info: api.ObjectInfo, start: int
) -> artifactstore.ResumePoint:
    """Where a range's read begins, found before the answer starts: NATS failing meanwhile
    (away, restarted) answers 503, not a 206 cut short."""
    idle = ctx.settings.artifact_read_idle_seconds
    try:
        return await artifactstore.resume_point(ctx.js, ctx.names, info, idle, start)
    except Exception as exc:
        raise _unavailable(exc) from None


def _attachment(filename_text: str) -> str:
    """Content-Disposition: a plain ASCII filename every client reads, and the real one."""
    safe = artifactnames.download_filename(filename_text)
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename_text, safe='')}"


@get("/api/jobs/{job_id:str}/artifacts", tags=["artifacts"], summary="A job's artifacts")
async def list_job_artifacts(request: Request[Any, Any, Any], job_id: str) -> schemas.ArtifactList:
    """The files the job left in its ``JOBRUNNER_OUTPUT_DIR``, by name, each with its download
    URL; ``archive_url`` downloads them all as one ZIP."""
    ctx = ctx_of(request)
    Query(request.query_params, ())
    await find_job(ctx, job_id, principal_of(request))
    rows = await readmodels.list_artifacts(ctx.pool, job_id)
    return schemas.ArtifactList(
        job_id=job_id,
        items=[_artifact_from_row(job_id, r) for r in rows],
        total_bytes=sum(r["size"] for r in rows),
        archive_url=archive_url(job_id) if rows else None,
    )


@get(
    _DOWNLOAD_ROUTE,
    tags=["artifacts"],
    summary="One artifact, streamed",
    media_type="application/octet-stream",
    responses={
        206: ResponseSpec(
            None,
            description="The one range the Range header asked for, with its Content-Range.",
            media_type="application/octet-stream",
        ),
        304: ResponseSpec(
            None, description="If-None-Match named the ETag: the client's copy is current."
        ),
        404: error_spec("No such job, or it has no artifact of that name."),
        410: error_spec("The artifact aged out of the store (ARTIFACT_GONE)."),
        416: error_spec("The Range holds no byte of the file (RANGE_NOT_SATISFIABLE)."),
        503: error_spec("NATS did not answer (ARTIFACTS_UNAVAILABLE)."),
    },
)
async def download_artifact(
    request: Request[Any, Any, Any], job_id: str, name: str
) -> Stream | Response[bytes]:
    """The file's bytes with its Content-Length and an ETag (its SHA-256); one ``Range``
    answers 206 with those bytes (``If-Range`` with the ETag resumes only the same content)."""
    ctx = ctx_of(request)
    Query(request.query_params, ())
    name = _name_as_sent(request, name, _DOWNLOAD_ROUTE)
    await find_job(ctx, job_id, principal_of(request))
    try:
        artifactnames.check_name(name)
    except artifactnames.BadArtifactName as exc:
        raise ApiError(400, "INVALID_ARTIFACT_NAME", f"That is no artifact name: {exc}.") from None
    row = await readmodels.get_artifact(ctx.pool, job_id, name)
    if row is None:
        raise ApiError(
            404,
            "ARTIFACT_NOT_FOUND",
            f"Job {job_id!r} has no artifact {name!r}; GET /api/jobs/{{id}}/artifacts lists them.",
        )
    # The ETag is taken from the object that is served, not the read model's row: the name sent
    # again by an external worker replaces the object before its row is projected, and the row's
    # SHA-256 would then label the new bytes (and answer 304 to a client holding the old ones).
    info = await _object(ctx, job_id, row)
    stored_digest = artifactstore.sha256_of(info)
    etag = f'"{stored_digest or row["sha256"]}"'
    headers = {**_DOWNLOAD_HEADERS, **_FILE_POLICY, "ETag": etag, "Accept-Ranges": "bytes"}
    if byteranges.if_none_match_holds(request.headers.get("if-none-match"), etag):
        return Response(b"", status_code=304, headers=headers)
    size = info.size or 0
    # A HEAD ignores Range (RFC 9110 section 14.2: only a GET's is served). Without a digest of
    # the stored object the ETag is the row's, which may describe other bytes (see above): an
    # If-Range then never holds, so a resumed download cannot splice two contents.
    if is_head(request) or (stored_digest is None and "if-range" in request.headers):
        wanted = None
    else:
        wanted = _wanted_range(request, etag, size, headers)
    headers |= {
        # Set here, not as the Stream's media_type: Litestar's Stream takes the route's
        # media_type (the OpenAPI's application/octet-stream) over its own.
        "Content-Type": row["content_type"],
        "Content-Disposition": _attachment(name.rsplit("/", 1)[-1]),
        "Content-Length": str(size if wanted is None else wanted.length),
    }
    if wanted is not None:
        headers["Content-Range"] = wanted.content_range()
    if is_head(request):
        body: Any = ()
    elif wanted is None:
        body = _chunks(ctx, info)
    else:
        at = await _resume_point(ctx, info, wanted.start)
        body = byteranges.first_bytes(_chunks(ctx, info, at), wanted.length)
    return Stream(body, status_code=200 if wanted is None else 206, headers=headers)


def _wanted_range(
    request: Request[Any, Any, Any], etag: str, size: int, headers: dict[str, str]
) -> byteranges.ByteRange | None:
    """The one range of the file the request asks for (``None``: all of it); a range past its
    end answers 416 with the file's size."""
    if not byteranges.if_range_holds(request.headers.get("if-range"), etag):
        return None
    try:
        return byteranges.requested_range(request.headers.get("range"), size)
    except byteranges.RangeNotSatisfiable:
        raise ApiError(
            416,
            "RANGE_NOT_SATISFIABLE",
            f"The range asked for ({request.headers.get('range')!r:.80}) holds no byte of "
            f"the artifact, which has {size} bytes.",
            headers={**headers, "Content-Range": f"bytes */{size}"},
            size=size,
        ) from None


@get(
    "/api/jobs/{job_id:str}/download-archive",
    tags=["artifacts"],
    summary="All of a job's artifacts as one ZIP, streamed",
    media_type="application/zip",
    responses={
        404: error_spec("No such job, or it has no artifacts (NO_ARTIFACTS)."),
        410: error_spec("An artifact aged out of the store (ARTIFACT_GONE)."),
        503: error_spec("NATS did not answer (ARTIFACTS_UNAVAILABLE)."),
    },
)
async def download_archive(request: Request[Any, Any, Any], job_id: str) -> Stream:
    """Written while it is sent (no Content-Length): stored members, ZIP64 where needed, each
    under its artifact name."""
    ctx = ctx_of(request)
    Query(request.query_params, ())
    job = await find_job(ctx, job_id, principal_of(request))
    rows = await readmodels.list_artifacts(ctx.pool, job_id)
    if not rows:
        raise ApiError(404, "NO_ARTIFACTS", f"Job {job_id!r} has no artifacts.")
    # Looked up before the first byte: a missing object answers an error, not a cut archive.
    # Each member is marked as read as soon as its description is read (a guard consumer): a
    # name sent again while earlier members stream keeps its old content until the archive ends.
    # A HEAD reads no member: it looks each one up (404/410 as a GET) and guards none.
    guards = artifactstore.ReadGuards(ctx.js, ctx.names, ctx.settings.artifact_read_idle_seconds)
    infos: dict[str, api.ObjectInfo] = {}
    try:
        for row in rows:
            infos[row["name"]] = info = await _object(ctx, job_id, row)
            if not is_head(request):
                await guards.add(info)
    except BaseException as exc:
        await guards.drop()
        if isinstance(exc, Exception) and not isinstance(exc, ApiError):
            raise _unavailable(exc) from None  # a guard not created: NATS away
        raise
    members = [Member(r["name"], infos[r["name"]].size or 0, r["stored_at"]) for r in rows]
    filename = artifactnames.download_filename(f"{job['job_type']}-{job_id}-artifacts") + ".zip"

    def contents(member: Member) -> AsyncIterator[bytes]:
        return _chunks(ctx, infos[member.name])

    return Stream(
        () if is_head(request) else guards.kept(zip_stream(members, contents)),
        media_type="application/zip",
        headers={**_DOWNLOAD_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def _last_status(ctx: ApiContext, job_id: str) -> events.StatusChanged | None:
    subject = ctx.names.job_kind_subject(job_id, "status")
    found = await last_readable(ctx.js, ctx.names.stream, subject, events.StatusChanged, job_id)
    return None if found is None else found[1]


@put(
    _UPLOAD_ROUTE,
    status_code=HTTP_201_CREATED,
    tags=["external jobs"],
    summary="An external job's worker attaches a file to its job",
    # The body is the file itself, any type; the callback token is the only credential.
    opt={"callback": True, "binary_body": True},
    request_max_body_size=None,  # the artifact limits apply, checked while the body arrives
    security=[{"CallbackToken": []}],
    responses={
        400: error_spec("The name could never be an artifact's (INVALID_ARTIFACT_NAME)."),
        401: error_spec("No callback token, or not this job's (INVALID_CALLBACK_TOKEN)."),
        409: error_spec("The job has not started (JOB_NOT_STARTED) or ended (JOB_FINISHED)."),
        413: error_spec("Over artifact_max_file_bytes or the job's artifact_max_job_bytes."),
        503: error_spec("NATS does not answer (EVENTS_UNAVAILABLE): send it again."),
        507: error_spec("NATS refused the file for good (ARTIFACT_NOT_STORED)."),
    },
)
async def upload_external_artifact(
    request: Request[Any, Any, Any], job_id: str, name: str
) -> artifactupload.ArtifactAccepted:
    """The body is stored as the job's artifact ``name`` (a relative path, ``/``-separated),
    listed and served like a tool's files. Send it while the job runs, before its result."""
    ctx = ctx_of(request)
    token = external.bearer_token(request.headers.get("authorization"))
    try:
        await external.authenticate(ctx, job_id, token)
        name = artifactupload.checked_name(_name_as_sent(request, name, _UPLOAD_ROUTE))
        status = await _last_status(ctx, job_id)
    except (NatsError, TimeoutError, ConnectionError) as exc:
        raise _events_unavailable(exc) from exc
    if status is None:
        raise ApiError(409, "JOB_NOT_STARTED", "Send a report first: the job is not running yet.")
    if status.status.is_terminal:
        raise ApiError(
            409,
            "JOB_FINISHED",
            f"The job already ended with status {status.status.value!r}; stop working on it.",
            status=status.status.value,
        )
    declared = request.headers.get("content-length")
    stored = sum(r["size"] for r in await readmodels.list_artifacts(ctx.pool, job_id))
    try:
        return await artifactupload.store_upload(
            ctx,
            job_id,
            name,
            request.stream(),
            int(declared) if declared and declared.isdigit() else None,
            stored,
        )
    except (NatsError, TimeoutError, ConnectionError) as exc:
        raise _events_unavailable(exc) from exc


def _events_unavailable(exc: Exception) -> ApiError:
    log.warning("external artifact not stored", error=repr(exc))
    return try_again_later(
        "EVENTS_UNAVAILABLE",
        "The event store does not answer right now; send the file again shortly.",
        retry_after=1,
    )


ROUTES = [list_job_artifacts, download_artifact, download_archive, upload_external_artifact]
