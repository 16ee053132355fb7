"""``-p NAME=VALUE`` arguments turned into typed job parameters, by the job type's schema.

The server validates again (patterns, ranges, choices); here only the type is decided, so that
``-p limit=5`` sends the number 5 and ``-p headless=no`` the boolean false.
"""

from __future__ import annotations

from typing import Any

from jobrunner.terminal.connection import ClientError

TRUE = frozenset({"true", "yes", "on", "1"})
FALSE = frozenset({"false", "no", "off", "0"})


def parse_parameters(job_type: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """The parameters of ``pairs`` (``NAME=VALUE`` each) typed by ``job_type``'s schema.

    A ``multi_enum`` parameter collects every repetition into a list; any other named twice is
    an error, as is a name the type does not have.
    """
    schema: dict[str, Any] = job_type.get("parameters", {})
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"-p {pair!r}: write it as NAME=VALUE")
        spec = schema.get(name)
        if spec is None:
            known = ", ".join(sorted(schema)) or "none"
            raise ClientError(
                f"-p {name}: job type {job_type['name']!r} has no parameter {name!r} "
                f"(its parameters: {known})"
            )
        kind = spec.get("type")
        if kind == "multi_enum":
            values.setdefault(name, []).append(raw)
            continue
        if name in values:
            raise ClientError(f"-p {name}: given twice; only a multi-choice parameter repeats")
        values[name] = _typed(name, kind, raw)
    return values


def _typed(name: str, kind: Any, raw: str) -> Any:
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ClientError(f"-p {name}: {raw!r} is not a whole number") from None
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
        raise ClientError(f"-p {name}: {raw!r} is not yes/no (true/false, on/off, 1/0)")
    return raw
