"""Browser sign-in, the session cookie, CSRF and the page headers, in a real Chromium."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from jobrunner.common.settings import Settings
from jobrunner.services.api.security.sessions import COOKIE_NAME
from tests.browser import browser  # noqa: F401  (the fixture)
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.raw_http import raw_exchange


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


@pytest.fixture
async def context(browser: Browser, system: System) -> AsyncIterator[BrowserContext]:  # noqa: F811
    """A fresh browser context, not signed in."""
    ctx = await browser.new_context(base_url=system.base_url)
    yield ctx
    await ctx.close()


@pytest.fixture
async def german_context(
    browser: Browser,  # noqa: F811
    system: System,
) -> AsyncIterator[BrowserContext]:
    """A fresh browser context of a German browser (Accept-Language de-DE), not signed in."""
    ctx = await browser.new_context(base_url=system.base_url, locale="de-DE")
    yield ctx
    await ctx.close()


WRONG_TOKEN = "jrt_0000000000000000_" + "x" * 43  # of a token's form, but none issued


async def sign_in_wrongly(page: Page, button: str = "Sign in") -> str | None:
    """Send a wrong token with the sign-in form (its button named ``button``): the error said."""
    await page.get_by_label("Token").fill(WRONG_TOKEN)
    await page.get_by_role("button", name=button).click()
    alert = page.get_by_role("alert")
    await alert.wait_for()
    return await alert.text_content()


async def sign_in_with_form(page: Page, token: str, target: str = "/jobs") -> None:
    await page.goto(target)
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**{target}")


async def in_page(page: Page, script: str, *args: Any) -> Any:
    return await page.evaluate(script, *args)


FETCH = """async ([method, path, body, headers]) => {
  const r = await fetch(path, {method, headers: {"Content-Type": "application/json", ...headers},
                               body: body === null ? undefined : JSON.stringify(body)});
  return {status: r.status, body: await r.text()};
}"""


@pytest.mark.browser
async def test_sign_in_sets_an_httponly_strict_cookie(
    context: BrowserContext, system: System
) -> None:
    """After sign-in the session is an HttpOnly, SameSite=Strict cookie scripts cannot read."""
    page = await context.new_page()
    await page.goto("/jobs")
    assert "/login?next=%2Fjobs" in page.url
    await sign_in_with_form(page, system.admin_token)
    (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE_NAME]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert system.admin_token not in cookie["value"]
    assert COOKIE_NAME not in await in_page(page, "() => document.cookie")
    me = await in_page(page, FETCH, ["GET", "/api/me", None, {}])
    assert me["status"] == 200
    assert '"name":"test-admin"' in me["body"]


@pytest.mark.browser
async def test_wrong_token_keeps_the_login_page(context: BrowserContext, system: System) -> None:
    """A wrong token shows an error on the sign-in page and sets no cookie."""
    page = await context.new_page()
    await page.goto("/login")
    await sign_in_wrongly(page)
    assert not [c for c in await context.cookies() if c["name"] == COOKIE_NAME]


@pytest.mark.browser
async def test_the_login_page_loads_without_a_failed_request(context: BrowserContext) -> None:
    """The sign-in page names the app's icon as every other page does: without it Chromium asked
    for /favicon.ico, got a 404, and logged "Failed to load resource" on every sign-in."""
    page = await context.new_page()
    failed: list[str] = []
    page.on("console", lambda msg: failed.append(msg.text) if msg.type == "error" else None)
    await page.goto("/login")
    icon = page.locator("link[rel=icon]")
    href = await icon.get_attribute("href")
    assert href is not None
    served = await page.request.get(href)
    assert served.status == 200
    assert served.headers["content-type"].startswith("image/svg+xml")
    assert failed == []


@pytest.mark.browser
async def test_the_login_page_follows_a_german_browser(german_context: BrowserContext) -> None:
    """With Accept-Language de-DE the sign-in page, and its error, are German (lang="de")."""
    page = await german_context.new_page()
    await page.goto("/jobs")
    assert "/login?next=%2Fjobs" in page.url
    assert await page.locator("html").get_attribute("lang") == "de"
    said = await sign_in_wrongly(page, "Anmelden")
    assert said == "Diesen Token gibt es nicht, oder er ist widerrufen oder abgelaufen."
    assert await page.locator("html").get_attribute("lang") == "de"


@pytest.mark.browser
async def test_the_login_language_chosen_with_lang_stays_after_a_wrong_token(
    german_context: BrowserContext,
) -> None:
    """A German browser opening /login?lang=en gets the wrong-token error in English too."""
    page = await german_context.new_page()
    await page.goto("/login?lang=en")
    assert await page.locator("html").get_attribute("lang") == "en"
    assert await sign_in_wrongly(page) == "That token is unknown, revoked or expired."
    assert await page.locator("html").get_attribute("lang") == "en"


@pytest.mark.browser
async def test_cookie_requests_that_change_state_need_the_csrf_token(
    context: BrowserContext, system: System
) -> None:
    """With the cookie alone a POST is refused (403); with the CSRF token it goes through."""
    page = await context.new_page()
    await sign_in_with_form(page, system.admin_token)
    job = {"job_type": "emit", "parameters": {"lines": 1}}
    refused = await in_page(page, FETCH, ["POST", "/api/jobs", job, {}])
    assert refused["status"] == 403
    assert "CSRF_FAILED" in refused["body"]
    me = await in_page(page, FETCH, ["GET", "/api/me", None, {}])
    csrf = msgspec.json.decode(me["body"])["csrf_token"]
    accepted = await in_page(page, FETCH, ["POST", "/api/jobs", job, {"X-CSRF-Token": csrf}])
    assert accepted["status"] == 201, accepted["body"]


@pytest.mark.browser
async def test_cross_site_form_does_not_carry_the_session(
    context: BrowserContext, system: System
) -> None:
    """A form on another site posting to jobrunner arrives without the cookie: 401, no job."""
    page = await context.new_page()
    await sign_in_with_form(page, system.admin_token)
    attacker = await context.new_page()
    await attacker.set_content(
        f'<form method="post" action="{system.base_url}/api/jobs/x/cancel">'
        '<input name="job_type" value="emit"><button id="go">go</button></form>'
    )
    async with attacker.expect_navigation():
        await attacker.click("#go")
    assert "UNAUTHORIZED" in await attacker.content()
    async with system.client() as client:
        assert (await client.get("/api/jobs")).json()["items"] == []


@pytest.mark.browser
async def test_event_source_authenticates_by_the_cookie(
    context: BrowserContext, system: System
) -> None:
    """An EventSource on the signed-in page receives job_update events (no header possible)."""
    page = await context.new_page()
    await sign_in_with_form(page, system.admin_token)
    await in_page(
        page,
        """() => { window.updates = []; window.opened = false;
                   const es = new EventSource('/api/jobs/stream');
                   es.onopen = () => { window.opened = true; };
                   es.addEventListener('job_update', e => window.updates.push(JSON.parse(e.data)));
                 }""",
    )
    await page.wait_for_function("() => window.opened")
    async with system.client() as client:
        created = await client.post("/api/jobs", json={"job_type": "emit"})
    job_id = created.json()["id"]
    await page.wait_for_function(
        "id => window.updates.some(u => u.jobId === id && u.status === 'completed')", arg=job_id
    )


@pytest.mark.browser
async def test_signing_out_ends_the_session(context: BrowserContext, system: System) -> None:
    """Sign-out (a CSRF-protected POST) deletes the cookie; pages need sign-in again."""
    page = await context.new_page()
    await sign_in_with_form(page, system.admin_token)
    me = msgspec.json.decode((await in_page(page, FETCH, ["GET", "/api/me", None, {}]))["body"])
    out = await in_page(page, FETCH, ["POST", "/logout", None, {"X-CSRF-Token": me["csrf_token"]}])
    assert out["status"] == 200  # fetch followed the redirect to the login page
    assert not [c for c in await context.cookies() if c["name"] == COOKIE_NAME]
    await page.goto("/jobs")
    assert "/login" in page.url


async def test_signing_out_with_a_multipart_form_answers_303(system: System) -> None:
    """Sign-out posted as a multipart form carrying the CSRF token (as a browser may send a
    form), over a raw socket: 303 to the sign-in page and the cookie deleted, at once (it once
    hung: the form, read for its token, was read again)."""
    cookie = await system.session_cookie()
    async with system.client(token=None, cookies={COOKIE_NAME: cookie}) as client:
        csrf = (await client.get("/api/me")).json()["csrf_token"]
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="csrf_token"\r\n\r\n'
        + csrf.encode()
        + b"\r\n--b0undary--\r\n"
    )
    head = [
        b"POST /logout HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Cookie: " + COOKIE_NAME.encode() + b"=" + cookie.encode(),
        b"Content-Type: multipart/form-data; boundary=b0undary",
        b"Content-Length: %d" % len(body),
    ]
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    answer = await raw_exchange(system.base_url, request, timeout=10)
    assert answer.status == 303, answer
    assert answer.headers["location"] == "/login"
    assert COOKIE_NAME in answer.headers["set-cookie"]


async def test_revoking_the_token_ends_its_sessions(system: System) -> None:
    """A session cookie stops working as soon as its token is revoked."""
    token = await system.create_token("browser-user", "operator")
    cookie = await system.session_cookie(token)
    async with system.client(token=None, cookies={COOKIE_NAME: cookie}) as client:
        assert (await client.get("/api/me")).status_code == 200
        await (await system.tokens()).revoke("browser-user")
        async with asyncio.timeout(10):
            while True:
                if (await client.get("/api/me")).status_code == 401:
                    break
                await asyncio.sleep(0.05)


async def test_forged_or_cross_origin_cookie_requests_are_refused(system: System) -> None:
    """A tampered cookie is 401; a cookie POST from another Origin is 403 even with the token."""
    cookie = await system.session_cookie()
    tampered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    async with system.client(token=None, cookies={COOKIE_NAME: tampered}) as client:
        assert (await client.get("/api/me")).status_code == 401
    async with system.client(token=None, cookies={COOKIE_NAME: cookie}) as client:
        csrf = (await client.get("/api/me")).json()["csrf_token"]
        response = await client.post(
            "/api/jobs",
            json={"job_type": "emit"},
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "CSRF_FAILED"


async def test_login_never_redirects_off_site(system: System) -> None:
    """``next`` pointing at another site lands on /jobs instead (no open redirect)."""
    async with system.client(token=None) as client:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            response = await client.post(
                "/login", data={"token": system.admin_token, "next": target}
            )
            assert response.status_code == 303
            assert response.headers["location"] == "/jobs"


@pytest.mark.parametrize("path", ["/login", "/jobs", "/api/jobs", "/health", "/nowhere"])
async def test_every_answer_carries_the_browser_protections(system: System, path: str) -> None:
    """Strict CSP without inline script, nosniff and frame-ancestors 'none' on every answer."""
    async with system.client() as client:
        response = await client.get(path)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
