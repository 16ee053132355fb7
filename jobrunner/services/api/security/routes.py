"""Sign-in for browsers, the caller's identity, and token management for admins."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import jinja2
import msgspec
from litestar import Controller, Request, Response, delete, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_303_SEE_OTHER
from litestar.types import ControllerRouterHandler

from jobrunner.services.api import i18n, jsonbody
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.reads import get
from jobrunner.services.api.security.middleware import Access, same_origin
from jobrunner.services.api.security.openapi import error_spec
from jobrunner.services.api.security.principal import optional_principal, principal_of
from jobrunner.services.api.security.sessions import COOKIE_NAME
from jobrunner.services.api.security.tokens import Role, TokenError, TokenNameTaken, TokenRecord

_TEMPLATES = Path(__file__).with_name("templates")
_jinja = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
)
DEFAULT_LANDING = "/jobs"


def access_of(request: Request[Any, Any, Any]) -> Access:
    access: Access = request.app.state.access
    return access


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://...`` (open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return DEFAULT_LANDING
    if any(c in target for c in "\r\n\\") or target.startswith("/login"):
        return DEFAULT_LANDING
    return target


def login_page(
    request: Request[Any, Any, Any], next: str, error: str | None = None, status: int = 200
) -> Response[str]:
    """The sign-in page in the language the other pages take (``?lang=``, the cookie, then
    ``Accept-Language``); ``error`` is an i18n key."""
    lang = i18n.language_of(request)
    html = _jinja.get_template("login.html").render(
        lang=lang,
        t=i18n.translator(lang),
        next=safe_next(next),
        error=error,
        principal=optional_principal(request),
    )
    return Response(
        html,
        status_code=status,
        media_type="text/html",
        headers={"Cache-Control": "no-store"},
        # The form posts to plain /login: the cookie keeps a ?lang= choice for its answer.
        cookies=i18n.remembered_choice(request),
    )


class LoginForm(msgspec.Struct, forbid_unknown_fields=True):
    token: str = ""
    next: str = DEFAULT_LANDING


@get("/login", opt={"public": True}, include_in_schema=False)
async def show_login(
    request: Request[Any, Any, Any], next: str | None = None, lang: str | None = None
) -> Response[str]:
    """``lang`` is declared so the access middleware lets ``?lang=`` through (it refuses query
    parameters a handler does not declare); ``login_page`` reads it with the cookie."""
    return login_page(request, next or DEFAULT_LANDING)


@get("/login.css", opt={"public": True}, include_in_schema=False, media_type="text/css")
async def login_css() -> str:
    return (_TEMPLATES / "login.css").read_text()


@post(
    "/login",
    opt={"public": True, "form": True},
    include_in_schema=False,
    status_code=HTTP_303_SEE_OTHER,
)
async def sign_in(
    request: Request[Any, Any, Any],
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Exchange a token for a session cookie (HttpOnly, SameSite=Strict)."""
    if not same_origin(request):
        raise ApiError(403, "CSRF_FAILED", "Cross-site sign-in is not accepted.")
    access = access_of(request)
    if not access.enabled:
        return Response(None, status_code=303, headers={"Location": safe_next(data.next)})
    assert access.store is not None
    assert access.signer is not None
    record = await access.store.authenticate(data.token.strip())
    if record is None:
        return login_page(request, data.next, error="login.unknown_token", status=401)
    response: Response[Any] = Response(
        None, status_code=HTTP_303_SEE_OTHER, headers={"Location": safe_next(data.next)}
    )
    response.set_cookie(
        COOKIE_NAME,
        access.signer.issue(record.id),
        max_age=access.signer.max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # behind a proxy: uvicorn --proxy-headers
    )
    return response


@post("/logout", opt={"role": Role.VIEWER.value, "form": True}, include_in_schema=False)
async def sign_out() -> Response[Any]:
    response: Response[Any] = Response(
        None, status_code=HTTP_303_SEE_OTHER, headers={"Location": "/login"}
    )
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


class Me(msgspec.Struct):
    name: str
    role: str
    own_jobs_only: bool
    token_id: str
    csrf_token: str | None = msgspec.field(default=None)


def csrf_token_for(request: Request[Any, Any, Any]) -> str:
    """The CSRF token of the signed-in browser (empty without a session), for templates:
    put it in forms as ``csrf_token`` or send it as the ``X-CSRF-Token`` header."""
    cookie = request.cookies.get(COOKIE_NAME)
    signer = access_of(request).signer
    return signer.csrf_token(cookie) if cookie and signer else ""


@get("/api/me", tags=["access"], summary="Who the caller is")
async def whoami(request: Request[Any, Any, Any]) -> Me:
    """The caller's token name, role and scope; for a browser session also its CSRF token."""
    principal = principal_of(request)
    return Me(
        name=principal.name,
        role=principal.role.value,
        own_jobs_only=principal.own_jobs_only,
        token_id=principal.token_id,
        csrf_token=csrf_token_for(request) if principal.via_session else None,
    )


class CreateToken(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: Role
    expires_at: datetime | None = None
    own_jobs_only: bool = False


class TokenInfo(msgspec.Struct):
    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    own_jobs_only: bool
    created_by: str | None
    revoked_at: datetime | None
    active: bool


class TokenCreated(TokenInfo):
    token: str = ""


def token_info(record: TokenRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role.value,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "own_jobs_only": record.own_jobs_only,
        "created_by": record.created_by,
        "revoked_at": record.revoked_at,
        "active": record.usable(),
    }


class TokenController(Controller):
    """Admins manage tokens over HTTP as ``jobrunner token`` does on the command line."""

    path = "/api/tokens"
    tags = ["access"]
    opt = {"role": Role.ADMIN.value}

    def _store(self, request: Request[Any, Any, Any]) -> Any:
        store = access_of(request).store
        if store is None:
            raise ApiError(409, "AUTH_DISABLED", "Authentication is off (--no-auth).")
        return store

    @get("/", summary="Every token, revoked ones included (never the secret)")
    async def list_tokens(self, request: Request[Any, Any, Any]) -> list[TokenInfo]:
        records = await self._store(request).all()
        return [TokenInfo(**token_info(r)) for r in records]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a token; the answer shows it once",
        # Read by hand below, as every JSON route's body (jsonbody.py): the framework's own
        # reading answered a body that is not JSON with 400 BAD_REQUEST, deep nesting with 500.
        opt={"request_body": CreateToken},
        responses={409: error_spec("A token with this name exists or existed.")},
    )
    async def create_token(self, request: Request[Any, Any, Any]) -> TokenCreated:
        data = jsonbody.decode(
            await request.body(),
            CreateToken,
            "INVALID_TOKEN_REQUEST",
            "The request body is not a token request",
        )
        try:
            record, token = await self._store(request).create(
                data.name,
                data.role,
                expires_at=data.expires_at,
                own_jobs_only=data.own_jobs_only,
                created_by=principal_of(request).name,
            )
        except TokenNameTaken as exc:
            raise ApiError(409, "TOKEN_NAME_TAKEN", f"{str(exc).capitalize()}.") from None
        except TokenError as exc:
            raise ApiError(422, "INVALID_TOKEN_REQUEST", f"{str(exc).capitalize()}.") from None
        return TokenCreated(**token_info(record), token=token)

    @delete(
        "/{token_id:str}",
        status_code=HTTP_200_OK,
        summary="Revoke a token (by id or name); its sessions end at once",
        responses={409: error_spec("The token tried to revoke itself.")},
    )
    async def revoke_token(
        self,
        request: Request[Any, Any, Any],
        token_id: Annotated[str, Parameter(max_length=64)],
    ) -> TokenInfo:
        store = self._store(request)
        record = await store.find(token_id)
        if record is None:
            raise ApiError(404, "TOKEN_NOT_FOUND", f"There is no token {token_id!r}.")
        if record.id == principal_of(request).token_id:
            # Revoking the token in use would lock its admin out mid-request.
            raise ApiError(
                409, "TOKEN_IN_USE", "A token cannot revoke itself; use another admin token."
            )
        return TokenInfo(**token_info(await store.revoke(record.id)))


ROUTES: list[ControllerRouterHandler] = [
    show_login,
    login_css,
    sign_in,
    sign_out,
    whoami,
    TokenController,
]
