"""A whole jobrunner in the test's event loop: projector, runner and a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from typing import Any

import httpx
import uvicorn

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.api.app import create_app
from jobrunner.services.api.httpprotocol import protocol_for
from jobrunner.services.api.security.sessions import COOKIE_NAME, SessionSigner
from jobrunner.services.api.security.tokens import TokenStore
from jobrunner.services.notifier.service import run_notifier
from jobrunner.services.projector.service import run_projector
from jobrunner.services.runner.service import run_runner
from tests.tools import http_clients
from tests.tools.uvicorn_serving import start_serving

# ``system.client()`` sends the admin token unless told otherwise.
ADMIN: Any = object()


class System:
    """The services of a test, each started when the test asks; ``async with System(...)``
    stops them all at the end. ``admin_token`` is created when the API starts; ``client()``
    sends it by default, ``client(token=None)`` nothing, ``client(token=t)`` another token
    (``create_token``).
    Browser tests call ``sign_in(context)`` to get a session cookie in a Playwright context."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._server: uvicorn.Server | None = None
        self._api_started = False
        self.admin_token = ""
        self._nc: Any = None
        self._tokens: TokenStore | None = None

    async def start_projector(self) -> None:
        await self._start("projector", run_projector)

    async def start_runner(self, name: str = "runner", **overrides: Any) -> None:
        settings = self.settings
        if overrides:
            import msgspec

            settings = msgspec.structs.replace(settings, **overrides)
        await self._start(name, run_runner, settings)

    async def start_notifier(self, name: str = "notifier", **overrides: Any) -> None:
        settings = self.settings
        if overrides:
            import msgspec

            settings = msgspec.structs.replace(settings, **overrides)
        await self._start(name, run_notifier, settings)

    async def _start(self, name: str, main: Any, settings: Settings | None = None) -> None:
        stop = asyncio.Event()
        self._stops[name] = stop
        self._tasks[name] = asyncio.create_task(main(settings or self.settings, stop), name=name)

    async def stop_service(self, name: str) -> None:
        self._stops[name].set()
        await asyncio.wait_for(self._tasks.pop(name), 30)

    async def exited(self, name: str) -> Any:
        """What a service returned once it ended by itself (raises what it raised)."""
        return await asyncio.wait_for(self._tasks.pop(name), 30)

    async def tokens(self) -> TokenStore:
        if self._tokens is None:
            self._nc = await eventstore.connect(self.settings, "tests")
            self._tokens = await TokenStore.open(self._nc.jetstream(), Names(self.settings.prefix))
        return self._tokens

    async def create_token(self, name: str, role: str = "admin", **options: Any) -> str:
        """A new token (``own_jobs_only=True``, ``expires_at=...`` as for ``jobrunner token``)."""
        _, token = await (await self.tokens()).create(name, role, **options)
        return token

    async def session_cookie(self, token: str | None = None) -> str:
        """The value of a session cookie for ``token`` (the admin token by default)."""
        store = await self.tokens()
        record = await store.authenticate(token or self.admin_token)
        assert record is not None, "unknown token"
        return SessionSigner(await store.session_key()).issue(record.id)

    async def sign_in(self, context: Any, token: str | None = None) -> None:
        """Sign a Playwright browser context in, as the login page would."""
        await context.add_cookies(
            [
                {
                    "name": COOKIE_NAME,
                    "value": await self.session_cookie(token),
                    "url": self.base_url,
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )

    async def start_api(self) -> None:
        if self.settings.auth and not self.admin_token:
            self.admin_token = await self.create_token("test-admin", "admin")
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.port,
            http=protocol_for(self.settings),  # as `jobrunner api` serves
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        listener = self._listen()
        self._tasks["api"] = await start_serving(self._server, listener)
        projector = self._tasks.get("projector")
        if projector is not None and not projector.done():
            await self.wait_read_models()

    def _listen(self) -> socket.socket:
        """The API's listening socket, bound here rather than by uvicorn: free_port() only said
        the port was free when the System was made, and another worker's server may have taken
        it since (uvicorn would then exit the whole test process). The first start takes
        another port then; a restart must come back on its address."""
        for _ in range(5):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.port))
            except OSError:
                listener.close()
                if self._api_started:
                    raise
                self.port = free_port()
                self.base_url = f"http://127.0.0.1:{self.port}"
                continue
            self._api_started = True
            return listener
        raise RuntimeError("no free port for the API")

    async def wait_read_models(self) -> None:
        """Until the API serves the read models (it answers 503 READ_MODELS_* until the projector
        has created them at this version), as a client retrying by Retry-After would."""
        async with self.client() as client, asyncio.timeout(30):
            while True:
                response = await client.get("/api/jobs", params={"limit": 1})
                if response.status_code != 503 or "READ_MODELS" not in response.text:
                    return
                await asyncio.sleep(0.05)

    async def stop_api(self) -> None:
        """Stop the HTTP server only: open connections drop; ``start_api()`` brings it back on
        the same port."""
        assert self._server is not None
        self._server.should_exit = True
        await asyncio.wait_for(self._tasks.pop("api"), 30)
        self._server = None

    async def start(self) -> None:
        await self.start_projector()
        await self.start_runner()
        await self.start_api()
        await self.wait_healthy()

    async def wait_healthy(self) -> None:
        """Until /health answers 200: the API serves. Not necessarily ok: before the projector
        has made the read models it is degraded (READ_MODELS_REBUILDING), and requests that
        read them answer 503 until it has."""
        async with self.client(token=None) as client, asyncio.timeout(30):
            while True:
                if (await client.get("/health")).status_code == 200:
                    return
                await asyncio.sleep(0.05)

    def client(self, token: Any = ADMIN, **kwargs: Any) -> httpx.AsyncClient:
        headers = dict(kwargs.pop("headers", None) or {})
        token = self.admin_token if token is ADMIN else token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        return http_clients.client(base_url=self.base_url, timeout=30, headers=headers, **kwargs)

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Whatever the test started is stopped, whether it passed or not."""
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        for stop in self._stops.values():
            stop.set()
        hung: list[str] = []
        for name, task in self._tasks.items():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                try:
                    await asyncio.wait_for(asyncio.shield(task), 30)
                except TimeoutError:
                    hung.append(f"{name} did not stop within 30 s; every task:\n{task_stacks()}")
                    task.cancel()
        if self._nc is not None:
            await eventstore.close(self._nc)
        # A service that does not stop is a bug: say where it hangs.
        assert not hung, "\n".join(hung)


def task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=6, file=out)
    return out.getvalue()
