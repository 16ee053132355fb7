"""Strict query strings: every parameter known, every value checked, a 400 naming the field.

Used by the history endpoints, where a typo in a filter must not silently widen the result.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from litestar.datastructures import MultiDict

from jobrunner.services.api.errors import ApiError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}\Z")  # \Z: "$" lets a final "\n" through
_SPACED_OFFSET = re.compile(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$")
MAX_SEARCH_LENGTH = 200
# ASCII digits, leading zeros allowed ("007" is 7, as in Last-Event-ID): int() also takes "1_000",
# "+5", " 5" and other scripts' digits, and raises its own error past 4300 digits. A leading "-"
# is read only to say the value is below its range (every parameter's minimum is 0 or more).
_INTEGER = re.compile(r"(-?)0*([0-9]+)")
# More digits (leading zeros aside) than any bound a parameter has: out of range, not parsed.
_MOST_DIGITS = 20
# ``archived``: ``false`` (the default: archived rows left out), ``true`` (only them), ``all``.
ARCHIVED_CHOICES = ("false", "true", "all")


# Why a value is no search text: a name, not a sentence, so that each page says it in its own
# language (the UI's catalogue has ``filters.search_<problem>``) and the API in English.
SearchProblem = Literal["too_long", "nul"]


def search_problem(value: str) -> SearchProblem | None:
    """Why ``value`` is no search text (too long, a NUL), or None: one rule for API and pages."""
    if len(value) > MAX_SEARCH_LENGTH:
        return "too_long"
    if "\x00" in value:
        return "nul"
    return None


def search_sentence(field: str, problem: SearchProblem) -> str:
    """The API's sentence for ``problem`` of the search parameter ``field``."""
    if problem == "too_long":
        return f"{field!r} is longer than {MAX_SEARCH_LENGTH} characters."
    return f"{field!r} contains a NUL character."


def invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "INVALID_QUERY", message, field=field)


def reject_unknown(present: Iterable[str], known: Collection[str]) -> None:
    """400 UNKNOWN_QUERY_PARAMETER for a parameter not in ``known``: a typo in a filter must
    not silently widen a result. The one check for every route (the access middleware runs it
    with the parameters a handler declares). The known names are sorted for the error only:
    a request with none unknown (nearly all) pays one set difference."""
    unknown = sorted(set(present).difference(known))
    if unknown:
        allowed = sorted(set(known))
        takes = ", ".join(allowed) if allowed else "none"
        raise ApiError(
            400,
            "UNKNOWN_QUERY_PARAMETER",
            f"Unknown query parameter {unknown[0]!r}; this address takes {takes}.",
            field=unknown[0],
            unknown=unknown,
            known=allowed,
        )


class Query:
    """The query string of one request, read field by field."""

    def __init__(self, params: MultiDict[str], known: Collection[str]) -> None:
        self._params = params
        reject_unknown(params.keys(), known)

    def _one(self, field: str) -> str | None:
        values = self._params.getall(field, [])
        if not values:
            return None
        if len(values) > 1:
            raise invalid(field, f"{field!r} may be given only once.")
        return values[0]

    def many(self, field: str) -> list[str]:
        """A repeatable parameter; each value may also be a comma-separated list."""
        out: list[str] = []
        for raw in self._params.getall(field, []):
            out.extend(part.strip() for part in raw.split(",") if part.strip())
        return out

    def choices(self, field: str, allowed: Iterable[str]) -> tuple[str, ...]:
        allowed = list(allowed)
        values = self.many(field)
        for value in values:
            if value not in allowed:
                raise invalid(
                    field, f"{value!r} is not a valid {field}; choose from {', '.join(allowed)}."
                )
        return tuple(dict.fromkeys(values))

    def names(self, field: str) -> tuple[str, ...]:
        values = self.many(field)
        for value in values:
            if not _NAME_RE.match(value):
                raise invalid(field, f"{value!r} is not a valid {field}.")
        return tuple(dict.fromkeys(values))

    def name(self, field: str) -> str | None:
        value = self._one(field)
        if value is not None and not _NAME_RE.match(value):
            raise invalid(field, f"{value!r} is not a valid {field}.")
        return value

    def text(self, field: str) -> str | None:
        value = self._one(field)
        if value is None or value == "":
            return None
        problem = search_problem(value)
        if problem:
            raise invalid(field, search_sentence(field, problem))
        return value

    def archived(self, field: str = "archived") -> bool | None:
        """``false`` (the default: archived rows left out), ``true`` (only them) or ``all``."""
        raw = self._one(field)
        if raw is None or raw == "false":
            return False
        if raw == "true":
            return True
        if raw == "all":
            return None
        choices = f"{', '.join(ARCHIVED_CHOICES[:-1])} or {ARCHIVED_CHOICES[-1]}"
        raise invalid(field, f"{field!r} must be {choices}, not {raw!r}.")

    def integer(
        self, field: str, default: int | None, minimum: int, maximum: int | None = None
    ) -> int | None:
        raw = self._one(field)
        if raw is None:
            return default
        found = _INTEGER.fullmatch(raw)
        if found is None:
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            raise invalid(field, f"{field!r} must be an integer in the digits 0-9, not {shown!r}.")
        negative, digits = found.groups()
        value = int(digits) if not negative and len(digits) <= _MOST_DIGITS else None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            word = "between" if maximum is not None else "at least"
            raise invalid(field, f"{field!r} must be {word} {minimum}{upper}.")
        return value

    def timestamp(self, field: str) -> datetime | None:
        """ISO 8601; a time without a zone is UTC."""
        raw = self._one(field)
        if raw is None:
            return None
        try:
            # A "+01:00" offset arrives as " 01:00" when the client did not encode the "+".
            value = datetime.fromisoformat(_SPACED_OFFSET.sub(r"\1+\2", raw.replace("Z", "+00:00")))
        except ValueError:
            raise invalid(
                field, f"{field!r} must be an ISO 8601 time such as 2026-01-31T12:00:00Z."
            ) from None
        if not value.tzinfo:
            return value.replace(tzinfo=UTC)
        try:
            # Year 1 at +14:00 is still year 0 in UTC: no datetime holds that instant, and the
            # read's driver, which sends it to Postgres in UTC, raised (a 500).
            value.astimezone(UTC)
        except OverflowError:
            side, edge = ("before", "0001-01-01") if value.year == 1 else ("after", "9999-12-31")
            raise invalid(
                field,
                f"{field!r} ({raw}) lies {side} the years 1 to 9999 in UTC, the times jobrunner "
                f"can compare; leave it out to set no bound, or send a time such as {edge}.",
            ) from None
        return value

    def time_range(self, from_field: str, to_field: str) -> tuple[datetime | None, datetime | None]:
        """Two ``timestamp`` fields that bound one range; a range that ends before it begins
        is a 400 INVALID_TIME_RANGE (it could only ever list nothing: a swapped pair, most
        likely, which an empty page would hide)."""
        start, end = self.timestamp(from_field), self.timestamp(to_field)
        if start is not None and end is not None and start > end:
            raise ApiError(
                400,
                "INVALID_TIME_RANGE",
                f"{from_field!r} ({self._one(from_field)}) is later than {to_field!r} "
                f"({self._one(to_field)}), so nothing could match; swap them or widen the range.",
                field=from_field,
            )
        return start, end

    def cursor(self, field: str, kind: type[Any]) -> Any:
        raw = self._one(field)
        if raw is None or raw == "":
            return None
        try:
            return decode_cursor(raw, kind)
        except ValueError:
            raise invalid(field, f"{field!r} is not a cursor this API handed out.") from None


def encode_cursor(value: Any) -> str:
    """An opaque, URL-safe cursor (base64 of JSON: clients must not build their own)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).rstrip(b"=").decode()


def keyset_page(
    rows: Sequence[Any], page_size: int, cursor_of: Callable[[Any], Any]
) -> tuple[list[Any], str | None]:
    """The page of ``rows`` (fetched one longer than a page, to learn whether another follows)
    and the cursor of the next page, made by ``cursor_of`` from the page's last row."""
    page = list(rows[:page_size])
    more = len(rows) > page_size
    return page, encode_cursor(cursor_of(page[-1])) if more else None


def decode_cursor(raw: str, kind: type[Any]) -> Any:
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return msgspec.json.decode(data, type=kind)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise ValueError("bad cursor") from None
