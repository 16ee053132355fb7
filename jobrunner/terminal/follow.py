"""Following a job in the terminal: its SSE stream, resumed by ``Last-Event-ID`` when the
connection drops, shown as coloured lines with a live progress bar (plain text when the output is
not a terminal). Ends with the job's ``done`` event."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from jobrunner.common.loglevels import shows_level
from jobrunner.common.terminaltext import visible
from jobrunner.terminal.connection import (
    AWAY_STATUSES,
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    Api,
    ClientError,
)
from jobrunner.terminal.first_line_bound import FirstLineBound
from jobrunner.terminal.shown_text import plain

LEVEL_STYLES = {
    "DEBUG": "dim",
    "INFO": "",
    "SUCCESS": "green",
    "WARNING": "yellow",
    "ERROR": "bold red",
}


def level_column(line: dict[str, Any]) -> str:
    """A log line's level column, padded; empty where its text as shown starts with the level (a
    tool's own ``INFO    ...``, coloured or not: the client drops colour codes), which would show
    it twice."""
    return _level_column(str(line.get("level", "INFO")), visible(str(line.get("text", ""))))


def _level_column(level: str, shown_text: str) -> str:
    return "" if shows_level(shown_text, level) else f"{level:<7} "


def log_line_text(line: dict[str, Any]) -> Text:
    """A log line as every command prints it (``logs``, ``logs --follow``, ``submit --follow``):
    ``HH:MM:SS LEVEL   text``, the tool's text shown as text (never obeyed, never markup, no
    ``:smile:`` made an emoji), in its level's colour on a terminal (rich writes no colour when
    the output is not one)."""
    level = str(line.get("level", "INFO"))
    text = visible(str(line.get("text", "")))
    # The stamp's dim a span of its own: as the Text's style it dimmed the whole line.
    shown = Text.assemble((f"{str(line.get('timestamp', ''))[11:19]} ", "dim"))
    shown.append(_level_column(level, text), style=LEVEL_STYLES.get(level, "") or "bold")
    shown.append(text, style=LEVEL_STYLES.get(level, ""))
    return shown


# How long a dropped stream is retried before the client gives up (a restarting server is back
# well within it); ``--reconnect-for`` sets another.
RECONNECT_FOR_SECONDS = 60.0
RECONNECT_PAUSE_SECONDS = 1.0
# A stream that sends nothing for this long is taken for lost: the API sends a keep-alive every
# sse_keepalive_seconds (15 s by default), so four missed mean a frozen API or a peer gone without
# closing the connection, which would otherwise be followed in silence for ever.
SILENT_STREAM_SECONDS = 60.0
PLAIN_PROGRESS_EVERY_SECONDS = 1.0
# How long one connect may take; while the stream is lost, at most the time left to reconnect.
CONNECT_SECONDS = 30.0


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


def sse_events(lines: Iterator[str]) -> Iterator[SseEvent]:
    """The events of a ``text/event-stream`` (comments and ``retry:`` skipped)."""
    current = SseEvent()
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                current.data = "\n".join(data)
                yield current
            current, data = SseEvent(), []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            current.id = value


class RateColumn(ProgressColumn):
    """Steps per second of the tool's own counter (``current`` over the time followed)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if not elapsed or not task.completed:
            return Text("")
        return Text(f"{task.completed / elapsed:,.1f}/s", style="cyan")


@dataclass
class Follower:
    """Prints what one job's stream carries; remembers where it is to resume."""

    api: Api
    job_id: str
    console: Console
    skip_lines_upto: int = 0  # lines already shown (``logs --tail``): not printed again
    reconnect_for: float = RECONNECT_FOR_SECONDS
    # Where the connection's loss and return are told: stderr, apart from the job's output.
    notices: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    last_event_id: str | None = None
    done: dict[str, Any] | None = None
    # Why the server ended the stream without ``done`` (its ``unavailable`` event), if it said.
    _ended_because: str | None = field(default=None, repr=False)
    _lost_since: float | None = field(default=None, repr=False)  # when the stream was lost
    _progress: Progress | None = field(default=None, repr=False)
    _task: Any = field(default=None, repr=False)
    _last_plain_progress: float = 0.0

    def run(self) -> dict[str, Any]:
        """Follow until the job is done; returns the ``done`` event's data."""
        live = self.console.is_terminal
        if live:
            self._progress = Progress(
                # The phase is the tool's text: shown as written, never read as markup.
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                RateColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._progress.add_task("pending", total=None)
            self._progress.start()
        try:
            self._follow()
        finally:
            if self._progress is not None:
                self._progress.stop()
        assert self.done is not None
        return self.done

    def _follow(self) -> None:
        """Read the stream until ``done``; when it drops, say so on stderr, connect again every
        ``RECONNECT_PAUSE_SECONDS`` resuming after the last event shown (``Last-Event-ID``: no
        line lost or repeated), say when it is back, and give up after ``reconnect_for``.
        (It used to retry in silence: a restart looked like a job printing nothing.)"""
        self._lost_since = None
        while self.done is None:
            headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
            self._ended_because = None
            # While lost, the answer and its first line within the time left (``FirstLineBound``);
            # every read waits SILENT_STREAM_SECONDS, lost or back.
            first_line: FirstLineBound | None = None
            http = self.api.http
            own: httpx.Client | None = None
            if self._lost_since is not None:
                first_line = FirstLineBound(self._time_left())
                # A connection of its own, where the bound starts (its trace tells the connect):
                # one kept from an answer before (a 503, a stream the server ended) reports no
                # connect, and an answer that never came waited SILENT_STREAM_SECONDS.
                http = own = self.api.unpooled()
            try:
                with http.stream(
                    "GET",
                    f"/api/jobs/{self.job_id}/stream",
                    headers={**headers, "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(self._connect_seconds(), read=SILENT_STREAM_SECONDS),
                    extensions=None if first_line is None else {"trace": first_line.trace},
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        refusal = self.api.refused(response)
                        if response.status_code in AWAY_STATUSES or (
                            # The lost stream may still count on the server for a while.
                            response.status_code == 429 and self._lost_since is not None
                        ):
                            raise _Away(str(refusal))
                        if response.status_code >= 500:
                            raise ClientError(
                                f"jobrunner at {self.api.target.url} failed on job "
                                f"{self.job_id}'s stream: {refusal}; a server error, which "
                                "following again would meet too: see the server's log",
                                EXIT_SERVER_ERROR,
                            )
                        raise refusal
                    # Back once the stream says something (a keep-alive will do), not at its
                    # headers: an API that stalls at once answers 200 and then nothing, which
                    # is no connection back (its give-up clock must run on).
                    for event in sse_events(self._telling_back(response.iter_lines(), first_line)):
                        self._show(event)
                        if self.done is not None:
                            return
                why = self._ended_because or "the server ended the stream"
            except httpx.TransportError as exc:  # a ReadTimeout too: SILENT_STREAM_SECONDS
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except _Away as exc:
                why = str(exc)
            finally:
                if first_line is not None:
                    first_line.stop()
                if own is not None:
                    own.close()
            if first_line is not None and first_line.fired.is_set():
                why = "it sent no stream line in the time left"
            now = time.monotonic()
            if self._lost_since is None:
                self._lost_since = now
                self._notice(
                    f"connection to {self.api.target.url} lost ({why}); retrying for up to "
                    f"{self.reconnect_for:g} s, resuming after {self._resume_point()}"
                )
            elif now - self._lost_since > self.reconnect_for:
                raise ClientError(
                    f"gave up following job {self.job_id}: jobrunner at {self.api.target.url} "
                    f"did not come back within {self.reconnect_for:g} s ({why}); the job goes "
                    f"on (`jobrunner logs {self.job_id} --follow` follows it again)",
                    EXIT_UNREACHABLE,
                )
            time.sleep(RECONNECT_PAUSE_SECONDS)

    def _connect_seconds(self) -> float:
        """``CONNECT_SECONDS``, or less while the stream is lost: the time left of
        ``reconnect_for`` (a connect that hangs must not outlast the give-up by 30 s)."""
        if self._lost_since is None:
            return CONNECT_SECONDS
        left = self.reconnect_for - (time.monotonic() - self._lost_since)
        return max(0.1, min(CONNECT_SECONDS, left))

    def _time_left(self) -> float:
        """What is left of ``reconnect_for`` while the stream is lost (at least 0.1 s)."""
        assert self._lost_since is not None
        return max(0.1, self.reconnect_for - (time.monotonic() - self._lost_since))

    def _telling_back(
        self, lines: Iterator[str], first_line: FirstLineBound | None
    ) -> Iterator[str]:
        """``lines``, saying on stderr at the first that the connection is back (when lost)."""
        for line in lines:
            if first_line is not None:
                if first_line.fired.is_set():
                    return
                first_line.stop()
            if self._lost_since is not None:
                self._notice(
                    f"connection back after {time.monotonic() - self._lost_since:.0f} s; "
                    f"resuming after {self._resume_point()}"
                )
                self._lost_since = None
            yield line

    def _resume_point(self) -> str:
        return f"event {self.last_event_id}" if self.last_event_id else "the stream's start"

    def _notice(self, sentence: str) -> None:
        """A line on stderr, above the progress bar on a terminal (it redirects stderr)."""
        self.notices.print(plain(f"jobrunner: {sentence}"), soft_wrap=True)

    def _show(self, event: SseEvent) -> None:
        try:
            data = json.loads(event.data)
        except ValueError:
            return
        if event.id is not None:
            self.last_event_id = event.id
        if event.event == "message":
            if int(data.get("seq", 0)) > self.skip_lines_upto:
                self._line(data)
        elif event.event == "progress":
            self._progress_update(data)
        elif event.event == "status":
            self._status(data)
        elif event.event == "cancel_requested":
            self._print(Text(f"cancel requested by {data.get('requested_by') or '?'}", "yellow"))
        elif event.event == "done":
            self.done = data
        elif event.event == "unavailable":
            self._ended_because = f"{data.get('code')}: {data.get('detail')}"

    def _line(self, line: dict[str, Any]) -> None:
        self._print(log_line_text(line))

    def _progress_update(self, data: dict[str, Any]) -> None:
        current, total, percent = data.get("current"), data.get("total"), data.get("percent")
        phase = data.get("phase") or "running"
        if self._progress is not None:
            if total is None and percent is not None:
                current, total = percent, 100.0
            self._progress.update(
                self._task, description=visible(str(phase)), completed=current or 0, total=total
            )
            return
        now = time.monotonic()
        if now - self._last_plain_progress < PLAIN_PROGRESS_EVERY_SECONDS:
            return
        self._last_plain_progress = now
        parts = [f"progress: {phase}"]
        if current is not None:
            parts.append(f"{current}/{total}" if total is not None else str(current))
        if percent is not None:
            parts.append(f"{percent:.0f}%")
        if data.get("message"):
            parts.append(str(data["message"]))
        self.console.print(plain(" ".join(parts)), highlight=False)

    def _status(self, data: dict[str, Any]) -> None:
        status = str(data.get("status", ""))
        if self._progress is not None and status == "running":
            self._progress.update(self._task, description="running")

    def _print(self, text: Text) -> None:
        """``text`` on the terminal (above the progress bar) or the pipe, as it is."""
        (self._progress.console if self._progress is not None else self.console).print(
            text, soft_wrap=True, highlight=False
        )


class _Away(Exception):
    """The server answered the stream with a 5xx: away for now, tried again like a dropped
    connection."""


def outcome_line(done: dict[str, Any]) -> str:
    status = str(done.get("status"))
    error = done.get("error") or {}
    parts = [f"job {status}"]
    if done.get("exit_code") is not None:
        parts.append(f"exit code {done['exit_code']}")
    if error:
        parts.append(f"{error.get('code')}: {error.get('message')}")
    return ", ".join(parts)


def check_job_id(job_id: str) -> str:
    if not job_id or "/" in job_id or len(job_id) > 200:
        raise ClientError(f"{job_id!r} is not a job id")
    return job_id
