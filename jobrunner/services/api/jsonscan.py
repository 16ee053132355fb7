"""What msgspec does not tell about a JSON body: a key given twice in one object, and a value it
cannot hold (an integer of more digits than Python reads, a number past any float, a lone
surrogate escape), each with its place (``$.parameters.n``).

msgspec decodes a repeated key silently (the last one wins) and has no option to refuse it
(msgspec issue #648, open); a proxy or a firewall reading the first one would see another request
than jobrunner does, so a body holding one is refused. Python's json scanner (C) hands each
object's pairs to a hook before they become a dict: :func:`check_unique_keys` runs it over every
body msgspec accepted. Only when it finds a repeat, or when msgspec refused JSON that Python's
grammar reads, is the body read once more (:func:`first_problem`, the slow path) to name the
place. The scan's cost, counted by ``bench.json_body_cost``: a 1,000-line report's reading
takes about 2.8 times the instructions it took (msgspec alone is that much faster).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# msgspec (like Python's int()) reads integers of at most this many digits.
_MAX_DIGITS = sys.get_int_max_str_digits() or sys.maxsize
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A key in a place as told, and the whole place: a client's text of any length.
MAX_SHOWN_KEY_CHARS = 100
MAX_SHOWN_PATH_CHARS = 300


class DuplicateKey(ValueError):
    """A key appears twice in one object (raised by the scan; :func:`first_problem` names it)."""


@dataclass(frozen=True)
class Problem:
    """The first thing in a body that is refused: ``kind`` (``duplicate_key``,
    ``number_too_large``, ``lone_surrogate``), its ``path`` (a repeated key's own:
    ``$.lines[0].text``), a sentence, and for a repeated key the key (its start)."""

    kind: str
    path: str
    sentence: str
    key: str | None = None


def check_unique_keys(text: str) -> None:
    """Raises :class:`DuplicateKey` when an object of ``text`` (JSON msgspec accepted) repeats a
    key; RecursionError for nesting deeper than Python's scanner goes."""
    # Every object's pairs are collected by a builtin (no Python call per object: a Python
    # hook doubled the cost of a 1,000-line report's reading), then compared, in C too, with
    # the dicts they make: a dict shorter than its pairs had a key twice.
    objects: list[list[tuple[str, Any]]] = []
    json.JSONDecoder(object_pairs_hook=objects.append).decode(text)
    if list(map(len, objects)) != list(map(len, map(dict, objects))):
        raise DuplicateKey


class _TooLarge:
    """A number no integer or float of the API holds, kept as written."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Pairs(list[tuple[str, Any]]):
    """An object's pairs in order, repeats kept."""


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


def first_problem(text: str) -> Problem | None:
    """The first (in the text's order) repeated key or value msgspec cannot hold in ``text``,
    or None: then it is not JSON at all (or nested deeper than Python reads)."""
    try:
        value = _SCAN_ALL.decode(text)
    except (ValueError, RecursionError):
        return None
    return next(_problems(value, "$"), None)


def _problems(value: Any, path: str) -> Iterator[Problem]:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, item in value:
            here = _step(path, key)
            if not _holdable(key):
                yield _lone_surrogate(key, here, "key")
            if key in seen:
                yield Problem(
                    "duplicate_key",
                    _shown_path(here),
                    f"the key {_shown(key)} is given twice in the object at {_shown_path(path)} "
                    "(which one counts is not defined: send it once)",
                    key=key[:MAX_SHOWN_KEY_CHARS],
                )
            seen.add(key)
            yield from _problems(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _problems(item, f"{path}[{index}]")
    elif isinstance(value, _TooLarge):
        yield Problem(
            "number_too_large",
            _shown_path(path),
            f"the number at {_shown_path(path)} ({_number_shown(value.text)}) is too large to "
            f"hold: integers up to {_MAX_DIGITS} digits and numbers up to about 1.8e308 are read",
        )
    elif isinstance(value, str) and not _holdable(value):
        yield _lone_surrogate(value, path, "string")


def _holdable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(text: str, path: str, what: str) -> Problem:
    lone = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    return Problem(
        "lone_surrogate",
        _shown_path(path),
        f"the {what} at {_shown_path(path)} holds a lone surrogate \\u{ord(lone):04x}, half of a "
        "UTF-16 pair that no text holds (escape a character outside the BMP as its two halves, "
        "\\ud83d\\ude00, or send it as UTF-8)",
    )


def _step(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_shown(key)}]"


def _shown(key: str) -> str:
    """A key as JSON text (escapes and all, so a lone surrogate shows as \\ud800), its start."""
    cut = key[:MAX_SHOWN_KEY_CHARS]
    return json.dumps(cut) if cut == key else json.dumps(cut)[:-1] + '..."'


def _shown_path(path: str) -> str:
    if len(path) <= MAX_SHOWN_PATH_CHARS:
        return path
    return path[:MAX_SHOWN_PATH_CHARS] + "..."


def _number_shown(text: str) -> str:
    return text if len(text) <= 20 else f"{text[:12]}... of {len(text)} characters"
