"""A whole jobrunner in the test's event loop: projector, runner and a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import uvicorn

from jobrunner.embedded.serverprocess import free_port
from jobrunner.settings import Settings
from services.api.app import create_app
from services.projector.service import run_projector
from services.runner.service import run_runner


class System:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._server: uvicorn.Server | None = None

    async def start_projector(self) -> None:
        await self._start("projector", run_projector)

    async def start_runner(self, name: str = "runner", **overrides: Any) -> None:
        settings = self.settings
        if overrides:
            import msgspec

            settings = msgspec.structs.replace(settings, **overrides)
        await self._start(name, run_runner, settings)

    async def _start(self, name: str, main: Any, settings: Settings | None = None) -> None:
        stop = asyncio.Event()
        self._stops[name] = stop
        self._tasks[name] = asyncio.create_task(main(settings or self.settings, stop), name=name)

    async def stop_service(self, name: str) -> None:
        self._stops[name].set()
        await asyncio.wait_for(self._tasks.pop(name), 30)

    async def start_api(self) -> None:
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._tasks["api"] = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(30):
            while not self._server.started:
                if self._tasks["api"].done():
                    self._tasks["api"].result()
                await asyncio.sleep(0.02)

    async def start(self) -> None:
        await self.start_projector()
        await self.start_runner()
        await self.start_api()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30, **kwargs)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        for stop in self._stops.values():
            stop.set()
        for task in self._tasks.values():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
