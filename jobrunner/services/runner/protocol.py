"""The progress and result protocol: lines a tool prints to tell the runner how far it is.

A line that starts with ``##jobrunner:`` is a message for the runner, not a log line::

    ##jobrunner:progress {"current": 42, "total": 127, "phase": "enrich", "message": "Müller"}
    ##jobrunner:progress {"percent": 12.5, "phase": "download"}
    ##jobrunner:result {"summary": "89 Websites gefunden, 38 ohne Ergebnis", "found": 89}

The payload is one JSON object. ``progress`` takes ``percent`` (0-100), ``current``/``total``,
``phase`` and ``message``, all optional; the percentage is computed from current/total when not
given. ``result`` objects are merged into the job's ``result`` (later keys win). Either stream
(stdout or stderr) works. A line that starts with the prefix but does not parse is logged as it is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from jobrunner.services.runner.output import Progress, percent_of

PREFIX = "##jobrunner:"


class _ProgressBody(msgspec.Struct, forbid_unknown_fields=False):
    current: int | None = None
    total: int | None = None
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
            # Clamped and cleaned with every other progress report (bounds.bounded_progress).
            return Progress(
                current=p.current,
                total=p.total,
                percent=percent,
                phase=p.phase,
                message=p.message,
            )
        if kind == "result":
            result = msgspec.json.decode(body.strip(), type=dict[str, Any])
            return result
    except msgspec.MsgspecError:
        return None
    return None
