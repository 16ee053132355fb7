"""Reading a JSON request body: one answer for a body that is not JSON, on every route.

``400 MALFORMED_JSON`` when the body is not JSON (or nested deeper than the decoder goes);
the route's own ``422`` when it is JSON of the wrong shape. msgspec checks the shape while it
parses, so a body that breaks off after an unknown field is first reported as a shape error:
such a body is parsed once more, without a type, to tell the two apart (only on that error).
A number no float holds (``1e999``) is not JSON here either: msgspec cannot read it (a batch's
untyped body always answered so).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from jobrunner.services.api.errors import ApiError

T = TypeVar("T")


def malformed(nested: bool = False) -> ApiError:
    why = "JSON nested too deeply to read" if nested else "not valid JSON"
    return ApiError(400, "MALFORMED_JSON", f"The request body is {why}.")


def decode(body: bytes, of: type[T], code: str, what: str) -> T:
    """``body`` as ``of``; for JSON that is not one ``422 <code>``, ``what`` and msgspec's
    sentence ("The report is not valid: Expected `int`, got `str` - at `$.progress`.")."""
    try:
        return msgspec.json.decode(body, type=of)
    except msgspec.ValidationError as exc:  # before DecodeError: it is one
        decode_any(body)  # raises MALFORMED_JSON for a body that is no JSON at all
        raise ApiError(422, code, f"{what}: {exc}.") from None
    except msgspec.DecodeError:
        raise malformed() from None
    except RecursionError:  # msgspec's error for JSON nested deeper than it can decode
        raise malformed(nested=True) from None


def decode_any(body: bytes) -> Any:
    """``body`` as whatever JSON it holds."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise malformed() from None
    except RecursionError:
        raise malformed(nested=True) from None
