"""Reading a JSON request body: one answer for a body that is not JSON, on every route.

``400 MALFORMED_JSON`` when the body is not JSON (or nested deeper than the decoder goes);
the route's own ``422`` when it is JSON of the wrong shape. msgspec checks the shape while it
parses, so a body that breaks off after an unknown field is first reported as a shape error:
such a body is parsed once more, without a type, to tell the two apart (only on that error).
JSON that msgspec cannot hold (a number no float holds, ``1e999``; an integer of more than
4,300 digits; a lone surrogate escape, ``"\\ud800"``) is ``400 UNSUPPORTED_JSON_VALUE`` naming
the place (``jsonscan``), in a body of at most :data:`MAX_DIAGNOSED_BYTES`: the second reading
runs on the event loop, so a larger one (a batch) is only "not valid JSON". A key given twice in
one object is not refused: the last one wins (``jsonscan`` says why).
``400 BODY_NOT_UTF8`` when the body is not UTF-8 (JSON written
in Latin-1 or UTF-16 by a Windows tool): "not valid JSON" sent its sender looking for a syntax
error in JSON that has none. Checked only once msgspec has refused the body: a good body pays
nothing.

UTF-16 and UTF-32 are told by their byte order mark, or without one by the NUL bytes their
first character has (RFC 4627 §3: a JSON text starts with an ASCII character, two or four bytes
wide there); a body of NULs that is no such text (``\x00\x01``) stays MALFORMED_JSON. A leading
UTF-8 byte order mark is ignored (RFC 8259 §8.1 lets a parser do so; Windows tools, Notepad and
PowerShell 5's ``-Encoding UTF8``, write one): refusing JSON that is UTF-8 as "not UTF-8" would
send its sender looking for an encoding problem it does not have.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from jobrunner.services.api import jsonscan
from jobrunner.services.api.errors import ApiError

T = TypeVar("T")

# The largest body read a second time to name a value msgspec cannot hold (every body but a
# batch's is at most this large).
MAX_DIAGNOSED_BYTES = 1024 * 1024

UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: UTF-32LE's mark begins with UTF-16LE's.
_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
)
# The NUL pattern of a first character that is ASCII (RFC 4627 §3), in the first four bytes
# (or two, for a one-character UTF-16 text): None is any byte but NUL.
_WIDE_PATTERNS = (
    ((0, 0, 0, None), "UTF-32BE"),
    ((None, 0, 0, 0), "UTF-32LE"),
    ((0, None), "UTF-16BE"),
    ((None, 0), "UTF-16LE"),
)
# What a JSON text may begin with: whitespace, a value's first character.
_JSON_FIRST = frozenset(' \t\r\n{["-0123456789tfn')


def bom_length(body: bytes) -> int:
    """How many bytes of ``body`` are a leading UTF-8 byte order mark (0 or 3)."""
    return len(body) - len(without_utf8_bom(body))


def without_utf8_bom(body: bytes) -> bytes:
    """``body`` without a leading UTF-8 byte order mark (RFC 8259 §8.1: a parser may ignore it)."""
    return body[len(UTF8_BOM) :] if body.startswith(UTF8_BOM) else body


def wide_encoding(body: bytes) -> str | None:
    """``UTF-16LE`` (and so on) when ``body`` is JSON in UTF-16 or UTF-32, told by its byte order
    mark or by the NUL bytes of its first (ASCII) character; else None."""
    for bom, name in _WIDE_BOMS:
        if body.startswith(bom):
            return name
    for pattern, name in _WIDE_PATTERNS:
        head = body[: len(pattern)]
        if len(head) == len(pattern) and all(
            (byte == 0) if want == 0 else (byte != 0)
            for byte, want in zip(head, pattern, strict=True)
        ):
            # Its first character one a JSON text may start with: else bytes of NULs that no
            # encoding makes JSON (``\x00\x01``), which are simply not JSON.
            return name if head.decode(name.lower(), "replace")[:1] in _JSON_FIRST else None
    return None


def malformed(nested: bool = False) -> ApiError:
    why = "JSON nested too deeply to read" if nested else "not valid JSON"
    return ApiError(400, "MALFORMED_JSON", f"The request body is {why}.")


def not_json(body: bytes, nested: bool = False, skipped: int = 0) -> ApiError:
    """The 400 for a ``body`` msgspec refused: BODY_NOT_UTF8 when it is not UTF-8 at all (its
    JSON may be fine); UNSUPPORTED_JSON_VALUE for JSON (of at most MAX_DIAGNOSED_BYTES) that
    holds a value msgspec cannot (``jsonscan``), naming it and its place; else MALFORMED_JSON.
    ``skipped``: how many bytes the client sent before ``body`` (a UTF-8 byte order mark), so
    that the byte named is counted as the client counts."""
    wide = wide_encoding(body)
    if wide is not None:
        return ApiError(
            400,
            "BODY_NOT_UTF8",
            f"The request body is {wide}, not UTF-8: send JSON encoded as UTF-8 (in PowerShell, "
            "-Encoding utf8; a file saved as Unicode or UTF-16 must be saved as UTF-8 first).",
            encoding=wide,
        )
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        return ApiError(
            400,
            "BODY_NOT_UTF8",
            f"The request body is not UTF-8 (byte {skipped + exc.start} is "
            f"0x{body[exc.start]:02x}, which no UTF-8 text holds there): send JSON encoded as "
            "UTF-8; a Latin-1 or Windows-1252 text must be converted first.",
            byte=skipped + exc.start,
        )
    if nested or len(body) > MAX_DIAGNOSED_BYTES:
        return malformed(nested)
    problem = jsonscan.first_problem(text)
    return malformed() if problem is None else unsupported(problem)


def unsupported(problem: jsonscan.Problem) -> ApiError:
    """The 400 for JSON holding a value msgspec cannot (a number too large, a lone surrogate
    escape)."""
    return ApiError(
        400,
        "UNSUPPORTED_JSON_VALUE",
        f"The request body is JSON, but {problem.sentence}.",
        path=problem.path,
        problem=problem.kind,
    )


def decode(body: bytes, of: type[T], code: str, what: str) -> T:
    """``body`` as ``of``; for JSON that is not one ``422 <code>``, ``what`` and msgspec's
    sentence ("The report is not valid: Expected `int`, got `str` - at `$.progress`.")."""
    return decode_as(
        body, of, lambda detail: ApiError(422, code, f"{what}: {detail}{choices_hint(of, detail)}.")
    )


def decode_as(body: bytes, of: type[T], wrong_shape: Callable[[str], ApiError]) -> T:
    """``body`` as ``of``, every route's one way to read JSON: the 400s of ``not_json``, and
    ``wrong_shape(msgspec's sentence)`` for JSON that is not an ``of``."""
    skipped = bom_length(body)
    unmarked = body[skipped:]
    try:
        return msgspec.json.decode(unmarked, type=of)
    except msgspec.ValidationError as exc:  # before DecodeError: it is one
        decode_any(body)  # raises the 400 for a body that is no JSON msgspec can read
        raise wrong_shape(str(exc)) from None
    except msgspec.DecodeError:
        raise not_json(unmarked, skipped=skipped) from None
    except RecursionError:  # msgspec's error for JSON nested deeper than it can decode
        raise not_json(unmarked, nested=True) from None


def decode_any(body: bytes) -> Any:
    """``body`` as whatever JSON it holds."""
    skipped = bom_length(body)
    unmarked = body[skipped:]
    try:
        return msgspec.json.decode(unmarked)
    except msgspec.DecodeError:
        raise not_json(unmarked, skipped=skipped) from None
    except RecursionError:
        raise not_json(unmarked, nested=True) from None


# msgspec's sentence for a value outside an enum or Literal: "Invalid enum value 'god' - at
# `$.role`". It names neither the field's choices nor what to send instead.
_BAD_CHOICE = re.compile(r"^Invalid enum value .* - at `(\$[^`]*)`$")
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[\d+\]")


def choices_hint(of: type, error: str) -> str:
    """ "; choose one of viewer, operator, admin" for msgspec's enum error, else nothing."""
    found = _BAD_CHOICE.match(error)
    choices = choices_at(msgspec.inspect.type_info(of), found.group(1)[1:]) if found else []
    return f"; choose one of {', '.join(choices)}" if choices else ""


def choices_at(info: msgspec.inspect.Type, path: str) -> list[str]:
    """The enum or Literal values of the field ``path`` (``.role``, ``.lines[0].level``) names
    in ``info``; [] where the path leads elsewhere."""
    if isinstance(info, msgspec.inspect.UnionType):
        return next(filter(None, (choices_at(each, path) for each in info.types)), [])
    step = _PATH_STEP.match(path)
    if step is None:
        if isinstance(info, msgspec.inspect.EnumType):
            return [str(member.value) for member in info.cls]
        if isinstance(info, msgspec.inspect.LiteralType):
            return [str(value) for value in info.values]
        return []
    rest = path[step.end() :]
    if step.group(1) is not None and isinstance(info, msgspec.inspect.StructType):
        field = next((f for f in info.fields if f.encode_name == step.group(1)), None)
        return choices_at(field.type, rest) if field else []
    if step.group(1) is None and isinstance(
        info, msgspec.inspect.ListType | msgspec.inspect.SetType | msgspec.inspect.VarTupleType
    ):
        return choices_at(info.item_type, rest)
    return []
