"""What an external job's worker may report, and how a report is checked and cleaned.

Pure code (no I/O), so every rule here has plain unit tests. The body is a msgspec Struct with
its bounds in the types: anything outside them is a 422 naming the field, never a 500. What is
within bounds but could not be stored as it is (escape sequences, NUL) is cleaned: a line exactly
as the runner cleans a tool's (``common.linecleaning``), a result's strings of single control
characters (never more: a result's text is data).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from jobrunner.common.linecleaning import clean_line
from jobrunner.common.loglevels import Level, Stream
from jobrunner.contracts.events import (
    MAX_RESULT_BYTES,
    Count,
    Message,
    Percent,
    Phase,
)
from jobrunner.services.api import jsonbody
from jobrunner.services.api.errors import ApiError

# A report's body, whole; far below the API's 1 MiB so that one report's lines always fit one
# LineLogged message (each line adds under 100 bytes of JSON to its text).
MAX_REPORT_BYTES = 256 * 1024
MAX_REPORT_LINES = 1000
MAX_REPORT_LINE_CHARS = 16 * 1024
MAX_RESULT_DEPTH = 32

ReportId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="1-128 of A-Z a-z 0-9 . _ : -; a retried report with the same id is stored "
        "once (within the stream's 2-minute duplicate window)",
    ),
]
WorkerErrorCode = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Z][A-Z0-9_]{1,63}$",
        description="UPPER_SNAKE_CASE, e.g. DOWNLOAD_FAILED, UNSUPPORTED_FILE",
    ),
]
LineText = Annotated[str, msgspec.Meta(max_length=MAX_REPORT_LINE_CHARS)]


class ReportedLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: LineText
    level: Level = "INFO"
    stream: Stream = "stdout"


class ReportedProgress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    phase: Phase | None = None
    percent: Percent | None = None
    current: Count | None = None
    total: Count | None = None
    message: Message | None = None


class ReportedError(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: WorkerErrorCode
    message: Message = ""


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One report. Every part is optional; an empty one is a heartbeat.

    Seed 001's worker sends ``{"phase", "progress": <percent>, "message"}`` at the top level and
    its final result as ``data``: both are understood too.
    """

    report_id: ReportId | None = None
    progress: ReportedProgress | Percent | None = None
    phase: Phase | None = None
    message: Message | None = None
    lines: Annotated[list[ReportedLine], msgspec.Meta(max_length=MAX_REPORT_LINES)] = []
    result: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    error: ReportedError | None = None

    @property
    def final_result(self) -> dict[str, Any] | None:
        if self.result is None and self.data is None:
            return None
        return {**(self.data or {}), **(self.result or {})}

    @property
    def progress_report(self) -> ReportedProgress | None:
        """The progress, whether given as an object or as the seed's top-level fields."""
        given = self.progress
        if isinstance(given, ReportedProgress):
            return msgspec.structs.replace(
                given,
                phase=given.phase if given.phase is not None else self.phase,
                message=given.message if given.message is not None else self.message,
            )
        if given is None and self.phase is None and self.message is None:
            return None
        return ReportedProgress(phase=self.phase, message=self.message, percent=given)


def decode_report(body: bytes) -> Report:
    """The report in ``body``, or ApiError 413/400/422 with a sentence naming what is wrong."""
    if len(body) > MAX_REPORT_BYTES:
        raise ApiError(
            413,
            "REPORT_TOO_LARGE",
            f"A report is at most {MAX_REPORT_BYTES} bytes; send its lines in several reports.",
            limit=MAX_REPORT_BYTES,
        )
    report = jsonbody.decode(body, Report, "INVALID_REPORT", "The report is not valid")
    if report.error is not None and report.final_result is not None:
        raise ApiError(
            422,
            "INVALID_REPORT",
            "A report ends the job either with a result or with an error, not with both.",
        )
    progress = report.progress_report
    if progress and progress.total is not None and progress.current is None:
        raise ApiError(422, "INVALID_REPORT", "Progress with a total needs its current count.")
    return report


# What a result's keys and strings lose: each control character but tab, one at a time. Not
# ``linecleaning``'s escape sequences: a result is data, and a string's text after an introducer
# (U+009D in mis-decoded UTF-8, an unended OSC) is the worker's payload, never swallowed. NUL is
# shown as U+2400, as in a line.
_CONTROL = re.compile(r"[\x01-\x08\x0a-\x1f\x7f-\x9f]")


def clean_result_text(text: str) -> str:
    """A result's key or string as stored: no control character but tab, NUL shown as ␀."""
    return _CONTROL.sub("", text.replace("\x00", "\u2400"))


def split_lines(lines: list[ReportedLine]) -> list[ReportedLine]:
    """A text with line breaks becomes one line per line, each cleaned as the runner cleans a
    tool's line (``common.linecleaning``): the same text is stored the same way on both paths.
    Not split as a runner splits a line over its ``max_line_bytes``: a reported text is at most
    16,384 characters, at most 64 KiB of UTF-8, the default ``max_line_bytes``."""
    out: list[ReportedLine] = []
    for line in lines:
        for part in line.text.split("\n"):
            out.append(ReportedLine(text=clean_line(part), level=line.level, stream=line.stream))
    return out


def clean_result(result: dict[str, Any]) -> dict[str, Any]:
    """The result with its keys and strings cleaned; 422 when it is too deep or too large."""
    cleaned = _clean_value(result, 0)
    assert isinstance(cleaned, dict)
    size = len(msgspec.json.encode(cleaned))
    if size > MAX_RESULT_BYTES:
        raise ApiError(
            422,
            "RESULT_TOO_LARGE",
            f"A job's result is at most {MAX_RESULT_BYTES} bytes of JSON; this one has {size}. "
            "Keep large outputs elsewhere and report where they are.",
            limit=MAX_RESULT_BYTES,
        )
    return cleaned


def _clean_value(value: Any, depth: int) -> Any:
    if depth > MAX_RESULT_DEPTH:
        raise ApiError(
            422,
            "INVALID_REPORT",
            f"A result may nest objects and lists at most {MAX_RESULT_DEPTH} deep.",
        )
    if isinstance(value, str):
        return clean_result_text(value)
    if isinstance(value, dict):
        return {clean_result_text(k): _clean_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v, depth + 1) for v in value]
    return value


def percent_of(progress: ReportedProgress) -> float | None:
    if progress.percent is not None:
        return progress.percent
    if progress.current is not None and progress.total:
        return min(100.0, progress.current * 100.0 / progress.total)
    return None
