"""Tokens, roles and per-token scope against a real jobrunner (auth on)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar.handlers import HTTPRouteHandler

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.app import create_app
from jobrunner.services.api.security.middleware import PUBLIC_PATHS
from tests.cli_support import run_cli
from tests.sse_client import iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


async def start_job(client: httpx.AsyncClient, **parameters: Any) -> str:
    created = await client.post("/api/jobs", json={"job_type": "emit", "parameters": parameters})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def wait_finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in TERMINAL:
                return dict(job)
            await asyncio.sleep(0.05)


async def status_of(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> int:
    """The status of a request; streams are closed as soon as their headers arrive."""
    async with client.stream(method, path, **kwargs) as response:
        return response.status_code


async def stored_events(system: System, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job as stored in JetStream, oldest first."""
    await system.tokens()  # opens the test's own NATS connection
    js = system._nc.jetstream()
    sub = await js.subscribe(
        Names(system.settings.prefix).job_subjects(job_id),
        stream=Names(system.settings.prefix).stream,
        ordered_consumer=True,
    )
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(json.loads(msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


# method, path, smallest role allowed ({job} and {token} are filled in)
ROUTE_TABLE: list[tuple[str, str, str]] = [
    ("GET", "/api/jobs", "viewer"),
    ("GET", "/api/jobs/{job}", "viewer"),
    ("GET", "/api/jobs/{job}/logs", "viewer"),
    ("GET", "/api/jobs/{job}/logs/download", "viewer"),
    ("GET", "/api/jobs/{job}/events", "viewer"),
    ("GET", "/api/jobs/{job}/stream", "viewer"),
    ("GET", "/jobs/stream/{job}", "viewer"),
    ("GET", "/api/jobs/stream", "viewer"),
    ("GET", "/api/job-types", "viewer"),
    ("GET", "/api/me", "viewer"),
    ("GET", "/api/schema/openapi.json", "viewer"),
    ("GET", "/jobs", "viewer"),
    ("GET", "/jobs/{job}", "viewer"),
    ("POST", "/api/jobs", "operator"),
    ("POST", "/api/jobs/{job}/cancel", "operator"),
    ("DELETE", "/api/jobs/{job}", "operator"),
    ("GET", "/api/tokens", "admin"),
    ("POST", "/api/tokens", "admin"),
    ("DELETE", "/api/tokens/{token}", "admin"),
]
RANK = {"viewer": 1, "operator": 2, "admin": 3}


async def test_each_role_gets_each_route_it_may_and_403_for_the_rest(system: System) -> None:
    """401 without a token, 403 below the route's role, through at or above it."""
    tokens = {role: await system.create_token(f"t-{role}", role) for role in RANK}
    spare = await system.create_token("spare", "viewer")
    spare_id = spare.split("_")[1]
    async with system.client() as admin:
        job = await start_job(admin, lines=1)
        await wait_finished(admin, job)
    table: list[tuple[str, str, str | None, int]] = []
    for method, template, _needed in ROUTE_TABLE:
        path = template.format(job=job, token=spare_id)
        for role in (None, *RANK):
            kwargs: dict[str, Any] = {}
            if method == "POST" and path == "/api/jobs":
                kwargs["json"] = {"job_type": "emit", "parameters": {"lines": 0}}
            elif method == "POST" and path == "/api/tokens":
                kwargs["json"] = {"name": f"made-by-{role}", "role": "viewer"}
            headers = {"Accept": "application/json"}
            async with system.client(token=tokens[role] if role else None) as client:
                status = await status_of(client, method, path, headers=headers, **kwargs)
            table.append((method, path, role, status))
    wrong = []
    for (method, path, role, status), (_, _, needed) in zip(
        table, [r for r in ROUTE_TABLE for _ in range(4)], strict=True
    ):
        if role is None:
            expected_ok = status == 401
        elif RANK[role] < RANK[needed]:
            expected_ok = status == 403
        else:
            expected_ok = status not in (401, 403) and status < 500
        if not expected_ok:
            wrong.append((method, path, role, status))
    assert wrong == []


async def test_every_route_of_the_app_is_closed_without_a_token(system: System) -> None:
    """Routes added later are closed by default: each non-public one answers 401 JSON."""
    app = create_app(system.settings)
    checked = []
    async with system.client(token=None) as client:
        for route in app.routes:
            for handler in getattr(route, "route_handlers", []):
                if not isinstance(handler, HTTPRouteHandler):
                    continue
                methods = handler.http_methods - {"OPTIONS", "HEAD"}
                path = re.sub(r"{(\w+):[^}]*}", "x", route.path)
                if PUBLIC_PATHS.match(path) or handler.opt.get("public"):
                    continue
                for method in methods:
                    response = await client.request(method, path)
                    checked.append((method, path, response.status_code))
                    assert response.status_code == 401, (method, path, response.text)
                    # An external job's reporting route asks for its own credential.
                    expected = (
                        "CALLBACK_TOKEN_REQUIRED" if handler.opt.get("callback") else "UNAUTHORIZED"
                    )
                    assert response.json()["error"]["code"] == expected
                    assert response.headers["www-authenticate"].startswith("Bearer")
    assert len(checked) > 15


async def test_health_and_login_page_need_no_token(system: System) -> None:
    """/health and the sign-in page answer without any credentials."""
    async with system.client(token=None) as client:
        assert (await client.get("/health")).status_code == 200
        login = await client.get("/login")
        assert login.status_code == 200
        assert "<form" in login.text


@pytest.mark.parametrize(
    "header",
    [
        "Bearer jrt_0000000000000000_" + "A" * 43,
        "Bearer not-a-token",
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ],
)
async def test_bad_credentials_get_401(system: System, header: str) -> None:
    """An unknown, malformed or non-bearer credential is refused with UNAUTHORIZED."""
    async with system.client(token=None, headers={"Authorization": header}) as client:
        response = await client.get("/api/jobs")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_token_with_right_id_but_wrong_secret_is_refused(system: System) -> None:
    """Knowing a token's id (it is shown in lists) does not help: the secret is checked."""
    token = await system.create_token("victim", "admin")
    forged = token[: -len("AAAA")] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with system.client(token=forged) as client:
        assert (await client.get("/api/jobs")).status_code == 401


async def test_expired_token_is_refused(system: System) -> None:
    """A token past its expiry answers 401 from that moment on."""
    store = await system.tokens()
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    record, token = await store.create("short", "viewer", expires_at=expires_at)
    async with system.client(token=token) as client:
        before = await client.get("/api/jobs")
        # On a loaded machine the first answer may come after the expiry: then 401 is right.
        assert before.status_code == 200 or datetime.now(UTC) >= expires_at, before.text
        async with asyncio.timeout(15):
            while True:
                if (await client.get("/api/jobs")).status_code == 401:
                    break
                await asyncio.sleep(0.1)
    assert record.expires_at is not None


async def test_revoked_token_is_refused_by_the_api(system: System) -> None:
    """Revoking a token elsewhere (CLI, another instance) reaches the API through the watch."""
    token = await system.create_token("doomed", "operator")
    async with system.client(token=token) as client:
        assert (await client.get("/api/jobs")).status_code == 200
        await (await system.tokens()).revoke("doomed")
        async with asyncio.timeout(10):
            while True:
                if (await client.get("/api/jobs")).status_code == 401:
                    break
                await asyncio.sleep(0.05)


async def test_a_token_record_that_cannot_be_read_opens_nothing_and_breaks_no_list(
    system: System,
) -> None:
    """A record in the token bucket that jobrunner did not write (by hand, or corrupt): its
    token is refused with 401 (not a 500), and the token list still answers with the rest."""
    store = await system.tokens()
    record, token = await store.create("spoiled", "admin")
    await store.kv.put(f"token.{record.id}", b"{not json")
    assert await store.get(record.id) is None
    async with system.client(token=token) as client:
        async with asyncio.timeout(10):
            while True:  # the API's copy of the records follows the bucket's watch
                if (await client.get("/api/jobs")).status_code == 401:
                    break
                await asyncio.sleep(0.05)
    async with system.client() as admin:
        listed = await admin.get("/api/tokens")
    assert listed.status_code == 200, listed.text
    assert "spoiled" not in listed.text


async def test_only_a_hash_of_the_token_is_stored(system: System) -> None:
    """The KV bucket holds the SHA-256 of the token, never the token itself."""
    store = await system.tokens()
    record, token = await store.create("hashed", "viewer")
    entry = await store.kv.get(f"token.{record.id}")
    assert entry.value is not None
    stored = json.loads(entry.value)
    assert token not in entry.value.decode()
    secret = token.removeprefix(f"jrt_{record.id}_")
    assert len(secret) >= 32
    assert secret not in entry.value.decode()
    assert stored["hash"] == hashlib.sha256(token.encode()).hexdigest()


async def test_admin_manages_tokens_over_http(system: System) -> None:
    """An admin creates a token (shown once), lists it without secret, and revokes it."""
    async with system.client() as admin:
        created = await admin.post(
            "/api/tokens", json={"name": "ci", "role": "operator", "own_jobs_only": True}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        token = body["token"]
        assert token.startswith("jrt_")
        listed = (await admin.get("/api/tokens")).json()
        assert [t["name"] for t in listed].count("ci") == 1
        assert all("token" not in t and "hash" not in t for t in listed)
        async with system.client(token=token) as ci:
            me = (await ci.get("/api/me")).json()
            assert (me["name"], me["role"], me["own_jobs_only"]) == ("ci", "operator", True)
            revoked = await admin.delete(f"/api/tokens/{body['id']}")
            assert revoked.status_code == 200
            assert revoked.json()["active"] is False
            assert (await ci.get("/api/me")).status_code == 401
        again = await admin.post("/api/tokens", json={"name": "ci", "role": "viewer"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "TOKEN_NAME_TAKEN"


async def token_cli(settings: Settings, nats_url: str, *args: str) -> str:
    """Run `jobrunner token ...` against ``nats_url``; its standard output."""
    env = {"JOBRUNNER_NATS_URL": nats_url, "JOBRUNNER_PREFIX": settings.prefix}
    out, _ = await run_cli("token", *args, env=env)
    return out


async def test_token_cli_takes_a_cluster_as_a_list_of_urls(settings: Settings) -> None:
    """`jobrunner token` reaches NATS through a comma-separated list of servers, as the services
    do, even when one of them is down."""
    cluster = f"nats://127.0.0.1:1, {settings.nats_url}"
    token = await token_cli(settings, cluster, "create", "ci-bot", "--role", "viewer")
    listed = await token_cli(settings, cluster, "list")
    assert token.strip().startswith("jrt_")
    assert re.search(r"ci-bot\s+viewer\s.*active", listed)


async def test_job_records_who_requested_and_who_cancelled_it(system: System) -> None:
    """The events name the token that started the job and the one that cancelled it."""
    alice = await system.create_token("alice", "operator")
    bob = await system.create_token("bob", "operator")
    async with system.client(token=alice) as a, system.client(token=bob) as b:
        job_id = await start_job(a, lines=100000, interval="0.01")
        cancel = await b.delete(f"/api/jobs/{job_id}")
        assert cancel.status_code == 202, cancel.text
        job = await wait_finished(a, job_id)
    assert job["requested_by"] == "alice"
    assert job["status"] == "cancelled"
    events = await stored_events(system, job_id)
    requested = next(e for e in events if e["type"] == "JobRequested")
    cancels = [e for e in events if e["type"] == "CancelRequested"]
    assert requested["requested_by"] == "alice"
    assert [c["requested_by"] for c in cancels] == ["bob"]
    ending = [e for e in events if e["type"] == "StatusChanged" and e["status"] == "cancelled"]
    assert [e["cancelled_by"] for e in ending] == ["bob"]
    assert job["cancelled_by"] == "bob"


async def test_own_jobs_token_sees_only_its_jobs(system: System) -> None:
    """A token limited to its own jobs gets 404 for everyone else's, everywhere."""
    store = await system.tokens()
    _, mine = await store.create("mine", "operator", own_jobs_only=True)
    _, other = await store.create("other", "operator", own_jobs_only=True)
    async with system.client(token=mine) as me, system.client(token=other) as them:
        my_job = await start_job(me, lines=3)
        their_job = await start_job(them, lines=3)
        await wait_finished(me, my_job)
        await wait_finished(them, their_job)
        listed = [j["id"] for j in (await me.get("/api/jobs")).json()["items"]]
        assert listed == [my_job]
        for path in (
            "/api/jobs/{}",
            "/api/jobs/{}/logs",
            "/api/jobs/{}/logs/download",
            "/api/jobs/{}/events",
            "/api/jobs/{}/stream",
            "/jobs/stream/{}",
        ):
            hidden = await me.get(path.format(their_job), headers={"Accept": "application/json"})
            assert hidden.status_code == 404, path
            assert hidden.json()["error"]["code"] == "JOB_NOT_FOUND"
            assert (await me.get(path.format(my_job))).status_code == 200, path
        assert (await me.delete(f"/api/jobs/{their_job}")).status_code == 404
        page = await me.get("/jobs", headers={"Accept": "text/html"})
        assert my_job in page.text
        assert their_job not in page.text
        hidden_page = await me.get(f"/jobs/{their_job}", headers={"Accept": "text/html"})
        assert hidden_page.status_code == 404
    async with system.client() as admin:
        everything = {j["id"] for j in (await admin.get("/api/jobs")).json()["items"]}
    assert everything == {my_job, their_job}


async def test_update_stream_of_own_jobs_token_carries_only_its_jobs(system: System) -> None:
    """The global job_update stream of an own-jobs token never shows another token's job."""
    store = await system.tokens()
    _, mine = await store.create("mine", "operator", own_jobs_only=True)
    _, other = await store.create("other", "operator", own_jobs_only=True)
    seen: set[str] = set()
    async with (
        system.client(token=mine) as me,
        system.client(token=other) as them,
        me.stream("GET", "/api/jobs/stream?after=0") as stream,
    ):
        assert stream.status_code == 200
        their_job = await start_job(them, lines=2)
        my_job = await start_job(me, lines=2)
        async with asyncio.timeout(30):
            async for event in iter_events(stream):
                seen.add(event.json["jobId"])
                if event.json["jobId"] == my_job and event.json["status"] == "completed":
                    break
    assert their_job not in seen
    assert seen == {my_job}


async def test_viewer_cannot_start_or_cancel(system: System) -> None:
    """A viewer reads but gets 403 FORBIDDEN naming the role it lacks when it writes."""
    viewer = await system.create_token("watcher", "viewer")
    async with system.client(token=viewer) as client:
        response = await client.post("/api/jobs", json={"job_type": "emit"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "FORBIDDEN"
    assert error["required_role"] == "operator"


async def test_busy_lock_does_not_name_another_tokens_job(system: System) -> None:
    """An own-jobs token hears 409 SLOT_BUSY but not which job holds the lock; an admin does."""
    store = await system.tokens()
    _, mine = await store.create("mine", "operator", own_jobs_only=True)
    _, other = await store.create("other", "operator", own_jobs_only=True)
    busy_request = {"job_type": "exclusive", "parameters": {"lines": 100000, "interval": "0.01"}}
    async with system.client(token=mine) as me, system.client(token=other) as them:
        holder = await me.post("/api/jobs", json=busy_request)
        assert holder.status_code == 201, holder.text
        refused = await them.post("/api/jobs", json=busy_request)
        async with system.client() as admin:
            told = await admin.post("/api/jobs", json=busy_request)
            await admin.delete(f"/api/jobs/{holder.json()['id']}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "SLOT_BUSY"
    assert refused.json()["error"]["running_job"] is None
    assert told.status_code == 409
    assert told.json()["error"]["running_job"]["id"] == holder.json()["id"]


async def test_a_busy_lock_names_its_holder_as_it_is(system: System) -> None:
    """SLOT_BUSY's sentence names the job holding the lock with its status (it said "A job is
    already running" also while the holder was still pending); an own-jobs token hears only
    that another job holds it."""
    store = await system.tokens()
    _, mine = await store.create("mine", "operator", own_jobs_only=True)
    busy_request = {"job_type": "exclusive", "parameters": {"lines": 100000, "interval": "0.01"}}
    async with system.client() as admin, system.client(token=mine) as me:
        holder = await admin.post("/api/jobs", json=busy_request)
        assert holder.status_code == 201, holder.text
        told = (await admin.post("/api/jobs", json=busy_request)).json()["error"]
        refused = (await me.post("/api/jobs", json=busy_request)).json()["error"]
        await admin.delete(f"/api/jobs/{holder.json()['id']}")
    held_by = told["running_job"]
    assert told["message"] == (
        f"Job {held_by['id']} (exclusive, {held_by['status']}) holds lock 'shared_sheet'; "
        "wait for it to end or cancel it."
    )
    assert (
        refused["message"]
        == "Another job holds lock 'shared_sheet'; wait for it to end or cancel it."
    )


async def test_one_name_asked_for_at_once_makes_one_token(system: System) -> None:
    """Token names are never reused (they are the identity in the events), also when several
    admins (or API instances) create the same name at the same moment: one 201, the rest 409
    TOKEN_NAME_TAKEN. (Each request checked the names, found none, and made its own token.)"""
    async with system.client() as client:
        answers = await asyncio.gather(
            *(client.post("/api/tokens", json={"name": "twin", "role": "viewer"}) for _ in range(5))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 409, 409, 409, 409], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "TOKEN_NAME_TAKEN"
    }
    named = [r for r in await (await system.tokens()).all() if r.name == "twin"]
    assert len(named) == 1
