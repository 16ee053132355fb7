"""Requests from other sites and other host names, refused in every mode (``--no-auth`` too):
a web page the operator visits can neither start nor cancel a job, by form, by ``text/plain`` or
by a rebound DNS name; the web UI and API clients work as before."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
from playwright.async_api import Browser

from jobrunner.common.settings import Settings
from jobrunner.services.api.security.origin import HostPolicy, hostname_of
from tests.browser import browser  # noqa: F401  (the fixture)
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

JOB = b'{"job_type": "emit", "parameters": {"lines": 1}}'
ATTACKER = "http://attacker.example"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """``jobrunner up --no-auth``: no token anywhere, so nothing else stops a forged request."""
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=False)


async def job_count(system: System) -> int:
    async with system.client() as client:
        answer = await client.get("/api/jobs")
    assert answer.status_code == 200, answer.text
    return len(answer.json()["items"])


async def test_a_cross_site_text_plain_post_starts_no_job(system: System) -> None:
    """A page on another site posting JSON as text/plain (no preflight needed) gets 403 and
    starts nothing."""
    async with system.client() as client:
        answer = await client.post(
            "/api/jobs",
            content=JOB,
            headers={
                "Content-Type": "text/plain",
                "Origin": ATTACKER,
                "Sec-Fetch-Site": "cross-site",
            },
        )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "CSRF_FAILED"
    assert await job_count(system) == 0


async def test_a_cross_site_form_post_cancels_nothing(system: System) -> None:
    """A form on another site posting to a job's cancel address gets 403; the job is untouched."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 1}}
        )
        assert created.status_code == 201, created.text
        answer = await client.post(
            f"/api/jobs/{created.json()['id']}/cancel",
            content=b"x=1",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": ATTACKER,
            },
        )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "CSRF_FAILED"


async def test_a_request_naming_a_rebound_host_is_refused(system: System) -> None:
    """A hostile name resolved to 127.0.0.1 (DNS rebinding) reaches the port, but a request
    naming it, reading or writing, answers 400 HOST_NOT_ALLOWED."""
    rebound = {"Host": f"attacker.example:{system.port}"}
    async with system.client(headers=rebound) as client:
        read = await client.get("/api/jobs")
        write = await client.post(
            "/api/jobs", content=JOB, headers={"Content-Type": "application/json"}
        )
    for answer in (read, write):
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "HOST_NOT_ALLOWED"
        assert "allowed_hosts" in answer.json()["error"]["message"]
    assert await job_count(system) == 0


async def test_a_same_origin_body_that_is_not_json_is_refused_clearly(system: System) -> None:
    """A body sent to a JSON address with another content type answers 415 with the reason,
    whatever the origin."""
    async with system.client() as client:
        answer = await client.post("/api/jobs", content=JOB, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in answer.json()["error"]["message"]
    assert await job_count(system) == 0


async def test_localhost_names_and_api_clients_keep_working(system: System) -> None:
    """Without Origin (curl, scripts) and under localhost, JSON requests start jobs as before."""
    async with system.client() as client:
        answer = await client.post(
            "/api/jobs",
            content=JOB,
            headers={"Content-Type": "application/json", "Host": f"localhost:{system.port}"},
        )
    assert answer.status_code == 201, answer.text


async def test_the_health_check_answers_probes_by_any_address(system: System) -> None:
    """Load balancers and probes ask /health by the machine's address: it answers them."""
    async with system.client(headers={"Host": f"10.1.2.3:{system.port}"}) as client:
        answer = await client.get("/health")
    assert answer.status_code in (200, 503)


@contextmanager
def attacker_site(html: str) -> Iterator[str]:
    """A real web server on another port of this machine serving ``html``: another origin (and,
    to Chromium, the same private network, so its requests are not blocked before they leave)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
async def test_a_page_on_another_origin_cannot_start_a_job_in_chromium(
    browser: Browser,  # noqa: F811
    system: System,
) -> None:
    """In a real browser, a page on another origin fires a no-cors text/plain fetch and a
    text/plain form POST at a --no-auth jobrunner: both answer 403 and no job starts."""
    form = (
        "<!doctype html><form id=f method=post enctype=text/plain "
        f'action="{system.base_url}/api/jobs" target=sink>'
        '<input name=\'{"job_type": "emit", "parameters": {"lines": 1}, "x": "\' '
        "value='\"}'></form><iframe name=sink></iframe>"
    )
    context = await browser.new_context()
    with attacker_site(form) as origin:
        page = await context.new_page()
        await page.goto(f"{origin}/")
        async with page.expect_response(f"{system.base_url}/api/jobs") as fetched:
            await page.evaluate(
                """async ([url, body]) => {
                     await fetch(url, {method: "POST", mode: "no-cors",
                                       headers: {"Content-Type": "text/plain"}, body});
                   }""",
                [f"{system.base_url}/api/jobs", JOB.decode()],
            )
        assert (await fetched.value).status == 403
        async with page.expect_response(f"{system.base_url}/api/jobs") as posted:
            await page.evaluate("() => document.getElementById('f').submit()")
        assert (await posted.value).status == 403
    await context.close()
    assert await job_count(system) == 0


@pytest.mark.parametrize(
    ("allowed", "host", "loopback", "name", "allows"),
    [
        ("", "127.0.0.1", True, "localhost", True),
        ("", "127.0.0.1", True, "127.0.0.1", True),
        ("", "127.0.0.1", True, "::1", True),
        ("", "127.0.0.1", True, "attacker.example", False),
        ("", "192.0.2.10", False, "192.0.2.10", True),
        ("", "192.0.2.10", False, "localhost", False),
        ("", "0.0.0.0", False, "anything.example", True),
        ("jobs.example.com", "0.0.0.0", False, "jobs.example.com", True),
        ("jobs.example.com", "0.0.0.0", False, "attacker.example", False),
        (".example.com", "127.0.0.1", True, "a.b.example.com", True),
        (".example.com", "127.0.0.1", True, "example.com", True),
        (".example.com", "127.0.0.1", True, "badexample.com", False),
        (".example.com", "127.0.0.1", True, "localhost", False),
        ("*", "127.0.0.1", True, "attacker.example", True),
    ],
)
def test_allowed_hosts_default_to_the_bound_host_and_take_names_and_subdomains(
    allowed: str, host: str, loopback: bool, name: str, allows: bool
) -> None:
    """Which host names a server answers for, by the host it binds and ``allowed_hosts``."""
    assert HostPolicy.from_settings(allowed, host, loopback).allows(name) is allows


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("", None),
        ("a@localhost", None),
        ("localhost:port", None),
        ("localhost/x", None),
    ],
)
def test_a_host_header_is_read_strictly(header: str, name: str | None) -> None:
    """A ``Host`` header gives its name only when it is a plain ``name[:port]``."""
    assert hostname_of(header) == name
