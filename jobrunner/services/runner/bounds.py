"""What a tool reports, cleaned at the source to the bounds the contracts state.

A tool may print anything: ``[99999999999999999999/5]``, a NUL inside a progress phase or a result
value, a result of many megabytes. None of that may reach the stream as it is (ARCHITECTURE
invariant 9): counts outside Postgres' ``integer`` are dropped, percentages clamped to 0-100,
control characters taken out of phase, message and result strings (whitespace ones become a space),
lengths bounded, and a result larger than ``MAX_RESULT_BYTES`` cut with a marker, never silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import msgspec

from jobrunner.common.linecleaning import ESCAPE_RE
from jobrunner.contracts.events import (
    MAX_COUNT,
    MAX_MESSAGE_CHARS,
    MAX_PHASE_CHARS,
    MAX_RESULT_BYTES,
    RESULT_CUT_FIELD,
)
from jobrunner.services.runner.output import Progress

CUT_MARK = "…"
_WHITESPACE_CONTROL = re.compile(r"[\t\n\r\x0b\x0c\x85]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MAX_RESULT_KEY_CHARS = 200
MAX_RESULT_TEXT_CHARS = 16 * 1024
MAX_RESULT_ITEMS = 1000  # per list or nested object
MAX_RESULT_DEPTH = 8
# Room kept for the RESULT_CUT_FIELD note itself.
_CUT_NOTE_ROOM = 512

_encoder = msgspec.json.Encoder()


def clean_field(text: str, max_chars: int) -> str:
    """One line of plain text: no escape sequences, no control characters, no lone surrogates,
    at most ``max_chars`` characters (a cut one ends with …)."""
    if not text.isprintable():
        # A whole escape sequence (also one begun by a C1 control), not its ESC alone; before the
        # line breaks become spaces, for a line break ends an unended string (an OSC title)
        # and the text after it is kept. NEL is a line break too, not a C1 sequence to remove.
        text = ESCAPE_RE.sub("", text.replace("\x85", " "))
        text = _CONTROL.sub("", _WHITESPACE_CONTROL.sub(" ", text))
    if len(text) > max_chars:
        text = text[: max_chars - len(CUT_MARK)] + CUT_MARK
    # A lone surrogate (only a Python caller can make one) cannot be encoded as UTF-8.
    return text.encode("utf-8", "replace").decode("utf-8")


def _count(value: object) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        return None  # absurd (negative, larger than any column holds, not a count at all)
    return value


def _percent(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        percent = float(value)
    except OverflowError:  # an int beyond any float
        percent = math.copysign(math.inf, value)
    return min(100.0, max(0.0, percent)) if not math.isnan(percent) else None


def _text(value: object, max_chars: int) -> str | None:
    # Python callers (ctx.progress) may pass anything: a phase of 3 is shown as "3".
    if not value:
        return None
    return clean_field(value if isinstance(value, str) else str(value), max_chars)


def bounded_progress(progress: Progress) -> Progress:
    """Counts within 0..MAX_COUNT (else dropped), percent clamped to 0-100 (NaN dropped), phase
    and message cleaned and bounded, whatever types a Python caller passed."""
    return replace(
        progress,
        current=_count(progress.current),
        total=_count(progress.total),
        percent=_percent(progress.percent),
        phase=_text(progress.phase, MAX_PHASE_CHARS),
        message=_text(progress.message, MAX_MESSAGE_CHARS),
    )


def result_value(value: Any, depth: int = 0) -> Any:
    """A value as JSON can carry it and the read model can store it: strings cleaned and cut,
    lists and objects cut after MAX_RESULT_ITEMS, anything else by its ``str()``."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_field(value, MAX_RESULT_TEXT_CHARS)
    if depth < MAX_RESULT_DEPTH and isinstance(value, dict):
        items = list(value.items())
        out = {
            clean_field(str(k), MAX_RESULT_KEY_CHARS): result_value(v, depth + 1)
            for k, v in items[:MAX_RESULT_ITEMS]
        }
        if len(items) > MAX_RESULT_ITEMS:
            out[RESULT_CUT_FIELD] = f"{len(items) - MAX_RESULT_ITEMS} more fields left out"
        return out
    if depth < MAX_RESULT_DEPTH and isinstance(value, list | tuple):
        out_list = [result_value(v, depth + 1) for v in value[:MAX_RESULT_ITEMS]]
        if len(value) > MAX_RESULT_ITEMS:
            out_list.append(f"{CUT_MARK} {len(value) - MAX_RESULT_ITEMS} more items left out")
        return out_list
    return clean_field(str(value), MAX_RESULT_TEXT_CHARS)


class BoundedResult:
    """A job's result, merged field by field (later keys win) and kept, encoded, within
    MAX_RESULT_BYTES: a field that no longer fits is left out and counted in RESULT_CUT_FIELD."""

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._size = 2  # {}
        self._left_out: list[str] = []

    def merge(self, fields: dict[str, Any]) -> None:
        for raw_key, raw_value in fields.items():
            key = clean_field(str(raw_key), MAX_RESULT_KEY_CHARS)
            if key == RESULT_CUT_FIELD:
                continue  # ours
            value = result_value(raw_value)
            entry = len(_encoder.encode(key)) + len(_encoder.encode(value)) + 2  # ":" and ","
            self._size -= self._sizes.pop(key, 0)
            self._fields.pop(key, None)
            if self._size + entry > MAX_RESULT_BYTES - _CUT_NOTE_ROOM:
                if key not in self._left_out:
                    self._left_out.append(key)
                continue
            self._fields[key] = value
            self._sizes[key] = entry
            self._size += entry

    def value(self) -> dict[str, Any]:
        """The result to publish (empty when nothing was reported)."""
        if not self._left_out:
            return dict(self._fields)
        names = ", ".join(self._left_out[:5]) + (", …" if len(self._left_out) > 5 else "")
        note = clean_field(
            f"{len(self._left_out)} field(s) left out ({names}): a job's result is limited to "
            f"{MAX_RESULT_BYTES} bytes",
            _CUT_NOTE_ROOM // 2,
        )
        return {**self._fields, RESULT_CUT_FIELD: note}
