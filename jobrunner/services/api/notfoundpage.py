"""404 for a person: a browser asking for one of the UI's addresses (a job, a batch, a mistyped
path) gets a page in the UI's look saying what was not found, with a link back, instead of the
JSON error. ``/api`` and every client that prefers JSON (an ``Accept`` without text/html first,
htmx fragments) keep the JSON error of errors.py."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Template

from jobrunner.services.api import i18n
from jobrunner.services.api.errors import ApiError

# The sentence (an i18n key) and the way back for each code; any other 404 is an address
# where nothing is.
_WHAT_WAS_NOT_FOUND = {
    "JOB_NOT_FOUND": ("error.not_found", "/jobs", "notfound.back_jobs"),
    "BATCH_NOT_FOUND": ("batch.not_found", "/batches", "notfound.back_batches"),
}
_NOTHING_HERE = ("notfound.page", "/jobs", "notfound.back_jobs")


def wants_a_page(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    if path == "/api" or path.startswith("/api/") or request.headers.get("hx-request"):
        return False
    # JSON first: "*/*" (curl, httpx) and no Accept at all keep the JSON error.
    return request.accept.best_match(["application/json", "text/html"]) == "text/html"


def not_found_page(request: Request[Any, Any, Any], code: str) -> Template:
    lang = i18n.language_of(request)
    t = i18n.translator(lang)
    message_key, back_href, back_key = _WHAT_WAS_NOT_FOUND.get(code, _NOTHING_HERE)
    return Template(
        template_name="not_found.html",
        context={
            "lang": lang,
            "t": t,
            "message": t(message_key),
            "path": request.url.path,
            "back_href": back_href,
            "back_key": back_key,
        },
        status_code=404,
        headers={"Cache-Control": "no-store"},
    )


def with_not_found_pages(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """``handlers`` with their 404s answered by ``not_found_page`` where a browser asks."""
    on_api_error = handlers[ApiError]
    on_http_error = handlers[HTTPException]

    def api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
        if exc.status == 404 and wants_a_page(request):
            return not_found_page(request, exc.code)
        return on_api_error(request, exc)  # type: ignore[no-any-return]

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if isinstance(exc, NotFoundException) and wants_a_page(request):
            return not_found_page(request, "NOT_FOUND")
        return on_http_error(request, exc)  # type: ignore[no-any-return]

    return {**handlers, ApiError: api_error, HTTPException: http_error}
