"""What msgspec does not tell about a JSON body it refused: a value it cannot hold (an integer of
more digits than Python reads, a number past any float, a lone surrogate escape), with its place
(``$.parameters.n``).

Read only once msgspec has refused a body (a good body pays nothing), by Python's json scanner,
which keeps such values (:func:`first_problem`). That scanner recurses once per level of nesting
and its limit is the caller's remaining stack, so a body nested deeper than
:data:`MAX_DIAGNOSED_DEPTH` (counted first, without recursion) is not read again: it stays "not
valid JSON". The walk over what the scanner read is iterative.

A key given twice in one object is not looked for: the last one wins, as in msgspec and most
JSON parsers (RFC 8259 §4 asks senders for unique keys). Refusing it cost a 1,000-line report's
reading 6.4 times its instructions (bench/RESULTS.md, session 40).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

# msgspec (like Python's int()) reads integers of at most this many digits.
_MAX_DIGITS = sys.get_int_max_str_digits() or sys.maxsize
# Far from any stack's end whoever calls (a request handler is a few hundred frames deep at
# most, Python's limit 1,000), far past what a request of the API nests.
MAX_DIAGNOSED_DEPTH = 100
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A string, or one left open up to the text's end: each quote is matched once (a pattern that
# failed on an open string would rescan the rest of the text from every quote in it).
_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}
# A key in a place as told, and the whole place: a client's text of any length.
MAX_SHOWN_KEY_CHARS = 100
MAX_SHOWN_PATH_CHARS = 300

ProblemKind = Literal["number_too_large", "lone_surrogate"]


@dataclass(frozen=True)
class Problem:
    """The first value in a body that msgspec cannot hold: its ``kind``, its ``path``
    (``$.lines[0].text``) and a sentence naming both."""

    kind: ProblemKind
    path: str
    sentence: str


class _TooLarge:
    """A number no integer or float of the API holds, kept as written."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Pairs(list[tuple[str, Any]]):
    """An object's pairs in order, a repeated key's earlier values kept (msgspec read them too)."""


def _integer(text: str) -> int | _TooLarge:
    digits = len(text.lstrip("-"))
    return _TooLarge(text) if digits > _MAX_DIGITS else int(text)


def _float(text: str) -> float | _TooLarge:
    number = float(text)
    return number if math.isfinite(number) else _TooLarge(text)


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")  # NaN, Infinity: Python's json reads them


_SCAN_ALL = json.JSONDecoder(
    object_pairs_hook=_Pairs,
    parse_int=_integer,
    parse_float=_float,
    parse_constant=_not_json,
)


def nesting_depth(text: str) -> int:
    """How deep the arrays and objects of ``text`` nest at most (brackets in strings not
    counted); an upper bound for text that is not JSON."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def first_problem(text: str) -> Problem | None:
    """The first (in the text's order) value msgspec cannot hold in ``text``, or None: then it
    is not JSON at all, or nested deeper than :data:`MAX_DIAGNOSED_DEPTH`."""
    if nesting_depth(text) > MAX_DIAGNOSED_DEPTH:
        return None
    try:
        value = _SCAN_ALL.decode(text)
    except ValueError:
        return None
    return _first(value)


# A place as a chain of steps (a key, an index), made a string only for the problem told: a
# string per value would cost a body's size times its depth.
_Place = tuple["_Place", str | int] | None


def _first(value: Any) -> Problem | None:
    """The first problem in ``value`` in the text's order: depth first, one iterator per open
    array or object, no recursion: any depth the scanner read is walked."""
    if not isinstance(value, list):
        return _problem(value, None)
    stack: list[tuple[Iterator[tuple[str | int, Any]], _Place]] = [(_children(value), None)]
    while stack:
        children, place = stack[-1]
        for step, item in children:
            if isinstance(step, str) and not _holdable(step):
                return _lone_surrogate(step, (place, step), "key")
            if isinstance(item, list):
                stack.append((_children(item), (place, step)))
                break
            if isinstance(item, str | _TooLarge) and (problem := _problem(item, (place, step))):
                return problem
        else:
            stack.pop()
    return None


def _children(value: list[Any]) -> Iterator[tuple[str | int, Any]]:
    return iter(value) if isinstance(value, _Pairs) else enumerate(value)


def _problem(value: Any, place: _Place) -> Problem | None:
    """The problem of a scalar ``value``, or None."""
    if isinstance(value, _TooLarge):
        path = _path(place)
        return Problem(
            "number_too_large",
            path,
            f"the number at {path} ({_number_shown(value.text)}) is too large to hold: "
            f"integers up to {_MAX_DIGITS} digits and numbers up to about 1.8e308 are read",
        )
    if isinstance(value, str) and not _holdable(value):
        return _lone_surrogate(value, place, "string")
    return None


def _holdable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(text: str, place: _Place, what: str) -> Problem:
    lone = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    path = _path(place)
    return Problem(
        "lone_surrogate",
        path,
        f"the {what} at {path} holds a lone surrogate \\u{ord(lone):04x}, half of a "
        "UTF-16 pair that no text holds (escape a character outside the BMP as its two halves, "
        "\\ud83d\\ude00, or send it as UTF-8)",
    )


def _step(step: str | int) -> str:
    if isinstance(step, int):
        return f"[{step}]"
    return f".{step}" if _PLAIN_KEY.fullmatch(step) else f"[{_shown(step)}]"


def _path(place: _Place) -> str:
    steps = []
    while place is not None:
        place, step = place
        steps.append(_step(step))
    path = "$" + "".join(reversed(steps))
    return path if len(path) <= MAX_SHOWN_PATH_CHARS else path[:MAX_SHOWN_PATH_CHARS] + "..."


def _shown(key: str) -> str:
    """A key as JSON text (escapes and all, so a lone surrogate shows as \\ud800), its start."""
    cut = key[:MAX_SHOWN_KEY_CHARS]
    return json.dumps(cut) if cut == key else json.dumps(cut)[:-1] + '..."'


def _number_shown(text: str) -> str:
    return text if len(text) <= 20 else f"{text[:12]}... of {len(text)} characters"
