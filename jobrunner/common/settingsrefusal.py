"""How a setting's value is told when it is refused (or taken in another's place): where it was
written (the variable, the config file and its key, the command-line flag), as written, what is
wrong with it and what the setting takes, with an example.

Knows nothing of the settings themselves: ``settings.py`` hands each sentence the setting's
``Shape``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

ENV_PREFIX = "JOBRUNNER_"


class Shape(NamedTuple):
    """What a setting takes, as a sentence tells it."""

    name: str
    type: Any  # bool, int, float or str
    default: Any
    range: str  # "from 1 to 10"; empty for none
    form: str  # a text setting's own form ("one of auto, json, console"); empty for none


class SettingRefused(ValueError):
    """A ``value`` of ``name`` no service can honour; ``predicate`` says what is wrong with it
    ("is out of range"), ``takes`` what the setting takes; ``source`` where the value was
    written, when known (``load_settings`` names it in its own sentence)."""

    def __init__(
        self, name: str, value: Any, predicate: str, takes: str, source: str | None = None
    ) -> None:
        super().__init__(name, value, predicate, takes)
        self.name = name
        self.value = value
        self.predicate = predicate
        self.takes = takes
        self.source = source

    def __str__(self) -> str:
        return refusal(self.name, self.value, self.source, self.predicate, self.takes)


# msgspec's sentences for a value it cannot convert, read for the setting's name and what is
# wrong. Their wording is msgspec's, not a promise: should a release change it, such a value falls
# back to "invalid setting: ..." and tests/unit/test_settings_refusals.py fails.
_WRONG_TYPE = re.compile(r"Expected `(\w+)`, got `\w+` - at `\$\.(\w+)`")
_TOO_LARGE = re.compile(r"Number out of range - at `\$\.(\w+)`")


def refused(
    exc: msgspec.ValidationError,
    values: dict[str, Any],
    sources: dict[str, str],
    shape: Callable[[str], Shape],
) -> str:
    """The sentence for a value the settings refuse: where it was written (the variable, the
    file and its key, the flag), as written, what is wrong and what the setting takes.
    msgspec's own ("Expected `float`, got `str`", "Number out of range") names neither the
    variable nor the value, and every variable's value is a string."""
    if isinstance(exc.__cause__, SettingRefused):
        cause = exc.__cause__
        # As written when written; a default no service honours is told as it is.
        value = values.get(cause.name, cause.value)
        return refusal(cause.name, value, sources.get(cause.name), cause.predicate, cause.takes)
    if matched := _WRONG_TYPE.fullmatch(str(exc)):
        name = matched[2]
        predicate = f"is not {kind(shape(name).type)}"
    elif matched := _TOO_LARGE.fullmatch(str(exc)):
        name, predicate = matched[1], "is out of range"
    else:
        return f"invalid setting: {exc}"
    return refusal(name, values[name], sources.get(name), predicate, what_it_takes(shape(name)))


def refusal(name: str, value: Any, source: str | None, predicate: str, takes: str) -> str:
    """``<the value where it was written> <predicate>: <name> takes <what it takes>``."""
    return f"{written(name, value, source, predicate)}: {name} takes {takes}"


def written(name: str, value: Any, source: str | None, predicate: str) -> str:
    """A value where it was written, as written, then ``predicate``. The source is a variable,
    ``config file <path>`` or a command-line flag (``--port``); None for a value given in code,
    told as ``name = value``."""
    if source is None:
        return f"{name} = {as_toml(value)} {predicate}"
    if source.startswith(ENV_PREFIX):
        return f"{source}={str(value)!r} {predicate}"  # a number the service holds, as text
    if source.startswith("--"):
        return f"{source} {value} {predicate}"
    return f"{source} has {name} = {as_toml(value)}, which {predicate}"


def kind(field_type: Any) -> str:
    """What a setting's value must be, for "is not ..."."""
    if field_type is bool:
        return "true or false"
    if field_type is int:
        return "a whole number"
    if field_type is float:
        return "a number"
    return "text"


def what_it_takes(shape: Shape) -> str:
    """What a setting takes, with its range or form, and its default as an example."""
    if shape.type is bool:
        return "true or false (or 1 or 0)"
    unit = next((unit for end, unit in UNITS.items() if shape.name.endswith(end)), "")
    bounds = f" {shape.range}" if shape.range else ""
    if shape.type is int:
        return f"a whole number{unit}{bounds}, such as {shape.default}"
    if shape.type is float:
        return f"a number{unit}{bounds}, such as {shape.default:g}"
    if shape.form:
        return shape.form
    if shape.name.endswith(("_file", "_dir")):
        return "a path in quotes"
    example = f", such as {json.dumps(shape.default)}" if shape.default else ""
    return f"text in quotes{example}"


UNITS = {
    "_seconds": " of seconds",
    "_days": " of days",
    "_ms": " of milliseconds",
    "_bytes": " of bytes",
}


def as_toml(value: Any) -> str:
    """A value as the config file wrote it (near enough for a sentence): a date or a time in
    TOML's ISO form, not Python's repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, datetime.date | datetime.time):  # a datetime is a date
        return value.isoformat()
    return repr(value)
