"""Internal jobs: a job type whose ``callable = "package.module:function"`` runs inside the runner.

The callable gets a :class:`JobContext` and may be ``async def`` (preferred) or a plain function
(run in a worker thread). It reports through the context: ``ctx.log(...)``, ``ctx.progress(...)``,
``ctx.set_result(...)``; a returned dict is merged into the job's ``result``; files it writes to
``ctx.output_dir`` become its artifacts. It sees the same
events, cancel and timeout as a subprocess job: on cancel or timeout ``ctx.cancel_requested``
becomes true, and after the job type's grace period an async callable is cancelled
(``asyncio.CancelledError``). A plain function cannot be interrupted: it must check
``ctx.cancel_requested`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobrunner.contracts.events import MAX_ERROR_CHARS
from jobrunner.services.runner.artifacts import OUTPUT_ENV
from jobrunner.services.runner.bounds import clean_field
from jobrunner.services.runner.output import Progress, percent_of, split_line


class CallableFailed(Exception):
    pass


class JobContext:
    """What an internal job's callable gets to report through."""

    def __init__(
        self, job_id: str, parameters: dict[str, Any], env: dict[str, str], sink: _Sink
    ) -> None:
        self.job_id = job_id
        self.parameters = parameters
        # The job type's env (with ${VAR} expanded), as a tool would get it.
        self.env = env
        # Files written here become the job's artifacts when it ends (as for a tool).
        output = env.get(OUTPUT_ENV)
        self.output_dir: Path | None = Path(output) if output else None
        self._sink = sink
        self._cancelled = threading.Event()

    @property
    def cancel_requested(self) -> bool:
        """True once the job was cancelled or timed out: stop soon."""
        return self._cancelled.is_set()

    def log(self, text: str, level: str = "INFO") -> None:
        for line in str(text).splitlines() or [""]:
            self._sink.put(("line", level.upper(), line))

    def progress(
        self,
        current: int | None = None,
        total: int | None = None,
        *,
        percent: float | None = None,
        phase: str | None = None,
        message: str | None = None,
    ) -> None:
        if percent is None and current is not None and total:
            percent = percent_of(current, total)
        self._sink.put(("progress", Progress(current, total, percent, phase, message)))

    def set_result(self, **fields: Any) -> None:
        self._sink.put(("result", fields))


class _Sink:
    """Carries reports from the callable (any thread) to the event loop, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def put(self, item: tuple[Any, ...] | None) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.queue.put_nowait(item)
        else:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CallableFailed(f"callable {target!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CallableFailed(f"cannot import {target!r}: {exc}") from None
    if not callable(obj):
        raise CallableFailed(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class InternalCall:
    """Runs the callable; same shape as ToolProcess for the runner: start, pump, wait, stop."""

    def __init__(
        self, target: str, job_id: str, parameters: dict[str, Any], env: dict[str, str]
    ) -> None:
        self.target = target
        self.job_id = job_id
        self.parameters = parameters
        self.env = env
        self.task: asyncio.Task[Any] | None = None
        self.ctx: JobContext | None = None
        self._sink: _Sink | None = None
        self.error: str | None = None
        self.returned: dict[str, Any] | None = None

    async def start(self) -> None:
        func = resolve(self.target)
        self._sink = _Sink(asyncio.get_running_loop())
        self.ctx = JobContext(self.job_id, self.parameters, self.env, self._sink)
        if inspect.iscoroutinefunction(func):
            self.task = asyncio.create_task(func(self.ctx), name=f"internal-{self.job_id}")
        else:
            self.task = asyncio.create_task(asyncio.to_thread(func, self.ctx))
        self.task.add_done_callback(lambda _: self._sink.put(None) if self._sink else None)

    async def pump(self, reporter: Any) -> None:
        """Hand the callable's reports to the job's reporter until it returns."""
        assert self._sink is not None
        while (item := await self._sink.queue.get()) is not None:
            match item:
                case ("line", level, text):
                    # Cleaned and split as a tool's output is: NUL shown, long lines in pieces.
                    raw = text.encode("utf-8", "replace")
                    at = datetime.now(UTC)
                    for piece in split_line(raw, reporter.max_line_bytes):
                        reporter.line("stdout", piece, at, level=level)
                        await reporter.room()
                case ("progress", progress):
                    reporter.progress(progress)
                case ("result", fields):
                    reporter.add_result(fields)

    async def wait(self) -> int:
        """0 on success; 1 when the callable raised (``error`` says what)."""
        assert self.task is not None
        try:
            value = await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.task.cancelled():
                return -15
            raise
        except Exception as exc:
            # Into the job's error message: bounded and without NUL, as any text a job reports.
            self.error = clean_field(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
            return 1
        if isinstance(value, dict):
            self.returned = value
        return 0

    async def stop(self, grace_seconds: float) -> None:
        """Ask the callable to stop; after the grace period, cancel it (async callables)."""
        if self.task is None or self.ctx is None:
            return
        self.ctx._cancelled.set()
        with contextlib.suppress(TimeoutError, Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), grace_seconds)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), 1.0)
