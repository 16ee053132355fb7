"""The progress and result protocol: lines a tool prints to tell the runner how far it is.

A line that starts with ``##jobrunner:`` is a message for the runner, not a log line::

    ##jobrunner:progress {"current": 42, "total": 127, "phase": "enrich", "message": "Müller"}
    ##jobrunner:progress {"percent": 12.5, "phase": "download"}
    ##jobrunner:result {"summary": "89 Websites gefunden, 38 ohne Ergebnis", "found": 89}

The payload is one JSON object. ``progress`` takes ``percent`` (0-100), ``current``/``total``
(0 to 2^31-1), ``phase`` and ``message``, all optional; the percentage is computed from
current/total when not given. ``result`` objects are merged into the job's ``result`` (later keys
win). Either stream (stdout or stderr) works. A line that starts with the prefix but does not
parse is logged as it is.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from jobrunner.services.runner.output import (
    MAX_PROGRESS_COUNT,
    Progress,
    clamp_percent,
    percent_of,
)

PREFIX = "##jobrunner:"


# A count outside what the read model stores makes the whole line a plain log line.
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_PROGRESS_COUNT)]


class _ProgressBody(msgspec.Struct, forbid_unknown_fields=False):
    current: _Count | None = None
    total: _Count | None = None
    percent: float | None = None
    phase: str | None = None
    message: str | None = None


def parse(text: str) -> Progress | dict[str, Any] | None:
    """A Progress, a result dict, or None when the line is not a valid protocol message."""
    if not text.startswith(PREFIX):
        return None
    kind, _, body = text[len(PREFIX) :].partition(" ")
    try:
        if kind == "progress":
            p = msgspec.json.decode(body.strip(), type=_ProgressBody)
            percent = p.percent
            if percent is None and p.current is not None and p.total:
                percent = percent_of(p.current, p.total)
            return Progress(
                current=p.current,
                total=p.total,
                percent=clamp_percent(percent),
                phase=_visible_nul(p.phase),
                message=_visible_nul(p.message),
            )
        if kind == "result":
            result = msgspec.json.decode(body.strip(), type=dict[str, Any])
            return _visible_nul(result) if "\\u0000" in body else result
    except (msgspec.MsgspecError, RecursionError):  # msgspec raises the latter on deep nesting
        return None
    return None


def _visible_nul(value: Any) -> Any:
    """NUL becomes ␀, as in every output line (it can only arrive here escaped as \\u0000): the
    read model's text columns cannot hold it."""
    if isinstance(value, str):
        return value.replace("\x00", "␀")
    if isinstance(value, list):
        return [_visible_nul(v) for v in value]
    if isinstance(value, dict):
        return {_visible_nul(k): _visible_nul(v) for k, v in value.items()}
    return value
