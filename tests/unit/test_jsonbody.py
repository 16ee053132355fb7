"""Reading a JSON request body (services/api/jsonbody.py): not JSON is 400 MALFORMED_JSON on every
route, JSON of the wrong shape the route's own 422."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jobrunner.services.api import jsonbody, jsonscan
from jobrunner.services.api.action_executor import decode_options
from jobrunner.services.api.errors import ApiError


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0


def is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def answer(body: bytes) -> tuple[int, str] | Shape:
    try:
        return jsonbody.decode(body, Shape, "INVALID_SHAPE", "The body is not a shape")
    except ApiError as exc:
        return exc.status, exc.code


def _refused(text: str) -> float:
    raise ValueError(text)


def _finite(text: str) -> float:
    number = float(text)
    return number if math.isfinite(number) else _refused(text)


def is_json(body: bytes) -> bool:
    """Python's json module's judgement of UTF-8 JSON, without what it accepts beyond the
    standard (NaN, Infinity) and what no float holds (1e999), which msgspec refuses; and a lone
    surrogate escape, which no string holds either."""
    try:
        # Decoded first: given bytes, json guesses UTF-16 or -32 from NULs (b"\x000" is "0").
        value = json.loads(body.decode(), parse_constant=_refused, parse_float=_finite)
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return False
    return True


def test_a_body_cut_after_an_unknown_field_is_malformed_not_the_wrong_shape() -> None:
    """msgspec reports the unknown field before the missing end; the answer is still that the
    body is not JSON (it was the route's 422)."""
    assert answer(b'{"surprise": 1') == (400, "MALFORMED_JSON")
    assert answer(b'{"surprise": 1}') == (422, "INVALID_SHAPE")


def test_json_nested_too_deeply_is_malformed() -> None:
    """Nesting past msgspec's depth is a 400, not a RecursionError (a 500)."""
    assert answer(b"[" * 100_000) == (400, "MALFORMED_JSON")
    assert answer(b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") == (
        400,
        "MALFORMED_JSON",
    )


def refusal(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as exc:
        jsonbody.decode(body, Shape, "INVALID_SHAPE", "The body is not a shape")
    return exc.value


@pytest.mark.parametrize(
    ("body", "path", "told"),
    [
        (b'{"count": 1e999}', "$.count", "the number at $.count (1e999) is too large to hold"),
        (b'{"name": "x", "count": -' + b"9" * 5000 + b"}", "$.count", "of 5001 characters"),
        (b'{"name": [0, 1e400]}', "$.name[1]", "the number at $.name[1] (1e400)"),
        (b'{"name": "\\ud800"}', "$.name", "holds a lone surrogate \\ud800"),
        (b'{"name": "a\\udc00b"}', "$.name", "holds a lone surrogate \\udc00"),
        (b'{"x": {"\\ud800 k": 1}}', '$.x["\\ud800 k"]', "the key at"),
    ],
)
def test_json_that_msgspec_cannot_hold_is_told_with_its_place(
    body: bytes, path: str, told: str
) -> None:
    """Valid JSON that no value of the API holds (a number past any float, an integer of more
    than 4,300 digits, a lone surrogate escape) is 400 UNSUPPORTED_JSON_VALUE saying what and
    where, not "not valid JSON" (which sent its sender looking for a syntax error)."""
    error = refusal(body)
    assert (error.status, error.code, error.extra["path"]) == (400, "UNSUPPORTED_JSON_VALUE", path)
    assert told in error.message, error.message
    assert error.extra["problem"] in ("number_too_large", "lone_surrogate")


def test_a_pair_of_surrogate_escapes_is_one_character_and_fine() -> None:
    """``\\ud83d\\ude00`` is one character (😀): read as such."""
    assert answer(b'{"name": "\\ud83d\\ude00"}') == Shape(name="\U0001f600")


def test_a_key_given_twice_takes_the_last_as_most_parsers_do() -> None:
    """A repeated key is not refused (scanning every body for one cost a 1,000-line report 6.4
    times its reading: bench/RESULTS.md): the last one wins, as README says, on every reader."""
    assert answer(b'{"name": "x", "name": "y"}') == Shape(name="y")
    assert jsonbody.decode_any(b'{"a": {"k": 1, "k": 2}}') == {"a": {"k": 2}}


def test_a_bad_value_under_a_key_given_twice_is_told_though_the_last_one_wins() -> None:
    """msgspec reads the earlier value too, and refuses it: so is it told, with its place."""
    error = refusal(b'{"name": "\\ud800", "name": "y"}')
    assert (error.code, error.extra["path"]) == ("UNSUPPORTED_JSON_VALUE", "$.name")


def test_a_bad_value_in_a_body_over_a_mebibyte_is_only_malformed() -> None:
    """The second reading that names the place runs on the event loop: a body past 1 MiB (a
    batch) is not read again, and answers plain MALFORMED_JSON."""
    filler = b"x" * jsonbody.MAX_DIAGNOSED_BYTES
    small = b'{"name": "\\ud800"}'
    large = b'{"count": 1, "x": "' + filler + b'", "name": "\\ud800"}'
    for got in every_read_refusal(small):
        assert got.code == "UNSUPPORTED_JSON_VALUE", got.message
    for got in every_read_refusal(large):
        assert (got.code, got.message) == ("MALFORMED_JSON", "The request body is not valid JSON.")


def nested(depth: int, inner: bytes, in_objects: bool) -> bytes:
    if in_objects:
        return b'{"a": ' * depth + inner + b"}" * depth
    return b"[" * depth + inner + b"]" * depth


def at_stack_depth(frames: int, call: Callable[[], None]) -> None:
    """``call()`` run ``frames`` Python frames deeper than here (a request handler is deep)."""
    if frames == 0:
        call()
    else:
        at_stack_depth(frames - 1, call)


@pytest.mark.parametrize("frames", [0, 500])
def test_a_bad_value_nested_at_any_depth_is_a_400_never_a_500(frames: int) -> None:
    """A lone surrogate, a number past any float and a repeated key nested 1 to 1,100 levels
    deep, read with hundreds of frames already on the stack or not: every reader answers 400
    (UNSUPPORTED_JSON_VALUE naming the place down to 100 levels, MALFORMED_JSON below), or
    reads the repeated key; before, some depths raised a RecursionError or an AssertionError
    (a 500), which depth depending on the caller's stack."""

    def sweep() -> None:
        for depth in range(1, 1101):
            for in_objects in (False, True):
                for inner in (b'"\\ud800"', b"1e400"):
                    for got in every_read(nested(depth, inner, in_objects)):
                        assert isinstance(got, tuple), (depth, got)
                        assert got[0] == 400, (depth, got)
                        if depth <= jsonscan.MAX_DIAGNOSED_DEPTH:
                            assert got[1] == "UNSUPPORTED_JSON_VALUE", (depth, got)
                        else:
                            assert got[1] == "MALFORMED_JSON", (depth, got)
                for got in every_read(nested(depth, b'{"a": 1, "a": 2}', in_objects)):
                    assert not isinstance(got, tuple) or got[0] in (400, 422), (depth, got)

    at_stack_depth(frames, sweep)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('[["[[[", {"a": "]]"}], []]', 3),
        ('[["\\"[[', 2),  # an open string runs to the end, its brackets not counted
        ('{"a": [' * 3, 6),
    ],
)
def test_the_nesting_counted_before_a_second_reading_skips_strings(text: str, depth: int) -> None:
    """What decides whether a refused body is read again: brackets in strings do not count."""
    assert jsonscan.nesting_depth(text) == depth


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
KEYS = st.sampled_from(["a", "name", "_x9", "odd key", "9", "é", "a.b", ""]) | SAFE_TEXT
GOOD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | SAFE_TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(SAFE_TEXT, inner, max_size=2),
    max_leaves=4,
)


def written(text: str, escapes: list[bool]) -> str:
    """``text`` as a JSON string, each character escaped as \\uXXXX or not as ``escapes``
    says (cycled), so the reader meets every way of writing it."""
    out = []
    for index, char in enumerate(text):
        code = ord(char)
        if code > 0xFFFF:  # as its two halves
            out.append(f"\\u{0xD800 + ((code - 0x10000) >> 10):04x}")
            out.append(f"\\u{0xDC00 + ((code - 0x10000) & 0x3FF):04x}")
        elif (escapes[index % len(escapes)] if escapes else False) or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(json.dumps(char, ensure_ascii=False)[1:-1])
    return '"' + "".join(out) + '"'


def expected_step(key: str) -> str:
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
    return f".{key}" if plain else f"[{json.dumps(key)}]"


@st.composite
def bodies_with_a_value_msgspec_cannot_hold(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """A body with one value msgspec cannot hold at a generated place (among good values, its
    keys escaped at random), the path to it and its kind."""
    escapes = draw(st.lists(st.booleans(), max_size=5))
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    kind, bad = draw(
        st.sampled_from(
            [
                ("number_too_large", "1e400"),
                ("number_too_large", "-2.5E+999"),
                ("number_too_large", "7" * 4301),
                ("lone_surrogate", "string"),
                ("lone_surrogate", "key"),
            ]
        )
    )
    before, after = draw(SAFE_TEXT), draw(SAFE_TEXT)
    steps = draw(st.lists(st.tuples(KEYS, st.integers(0, 2), st.booleans()), max_size=6))
    path = "$" + "".join(
        expected_step(key) if in_object else f"[{siblings}]" for key, siblings, in_object in steps
    )
    if bad == "string":
        text = written(before + surrogate + after, escapes)
    elif bad == "key":
        key = before + surrogate + after
        text = "{" + written(key, escapes) + ": 1}"
        path += f"[{json.dumps(key)}]"
    else:
        text = bad
    for key, siblings, in_object in reversed(steps):
        others = [json.dumps(draw(GOOD_VALUES)) for _ in range(siblings)]
        if in_object:
            pairs = [f"{json.dumps(f'o{n}')}: {value}" for n, value in enumerate(others)]
            text = "{" + ", ".join([*pairs, f"{written(key, escapes)}: {text}"]) + "}"
        else:
            text = "[" + ", ".join([*others, text]) + "]"
    return text.encode(), path, kind


@settings(max_examples=300, deadline=None)
@given(bodies_with_a_value_msgspec_cannot_hold())
def test_a_value_msgspec_cannot_hold_is_told_at_its_generated_place(
    case: tuple[bytes, str, str],
) -> None:
    """A lone surrogate (in a string or a key) or a number too large, anywhere among good
    values, its keys written with and without escapes: every reader answers 400
    UNSUPPORTED_JSON_VALUE with its kind and exactly its path."""
    body, path, kind = case
    for got in every_read_refusal(body):
        assert got.code == "UNSUPPORTED_JSON_VALUE", (body, got.message)
        assert (got.extra["problem"], got.extra["path"]) == (kind, path), body


@settings(deadline=None, max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["name", "count", "x"]), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda value: json.dumps(value).encode()),
    ).flatmap(lambda body: st.integers(0, len(body)).map(lambda cut: body[:cut] or body))
)
def test_every_body_is_a_shape_a_malformed_json_or_the_wrong_shape(body: bytes) -> None:
    """Any bytes: decoded, or 400 MALFORMED_JSON exactly when they are not JSON (Python's json
    module says), else the route's 422."""
    got = answer(body)
    if isinstance(got, Shape):
        assert is_json(body)
    elif not is_utf8(body):
        assert got == (400, "BODY_NOT_UTF8"), body
    elif not is_json(body):
        # Valid UTF-8 but no JSON: UTF-16 or -32 of ASCII (NULs between the characters) is
        # BODY_NOT_UTF8 too.
        assert got in {(400, "MALFORMED_JSON"), (400, "BODY_NOT_UTF8")}, body
        if b"\x00" not in body[:4]:
            assert got == (400, "MALFORMED_JSON"), body
    else:
        assert got == (422, "INVALID_SHAPE"), body


@pytest.mark.parametrize("body", [b"", b" ", b"{", b"nul"])
def test_decode_any_refuses_what_is_not_json(body: bytes) -> None:
    """The untyped read (a batch's body) answers MALFORMED_JSON too."""
    with pytest.raises(ApiError) as exc:
        jsonbody.decode_any(body)
    assert (exc.value.status, exc.value.code) == (400, "MALFORMED_JSON")


LATIN_1_ONLY = st.characters(min_codepoint=0x80, max_codepoint=0xFF)


@settings(max_examples=200)
@given(
    before=st.text(st.characters(max_codepoint=0xFF), max_size=10),
    accented=st.text(LATIN_1_ONLY, min_size=1, max_size=5),
    shaped=st.booleans(),
)
def test_a_latin_1_body_is_said_to_be_not_utf8_not_not_json(
    before: str, accented: str, shaped: bool
) -> None:
    """JSON written in Latin-1 (``{"name": "Müller"}`` from a Windows tool) answers 400
    BODY_NOT_UTF8 with a sentence naming UTF-8 and where the first bad byte is, typed or not,
    whatever field it is in (before: MALFORMED_JSON, "not valid JSON")."""
    value = before + accented
    body = json.dumps({"name": value} if shaped else {"other": value}, ensure_ascii=False)
    raw = body.encode("latin-1")
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        at = exc.start  # where a reader of UTF-8 stops
    else:
        assume(False)  # some Latin-1 ("Ã©") happens to be UTF-8 as well
    for read in (
        lambda: jsonbody.decode(raw, Shape, "INVALID_SHAPE", "The body is not a shape"),
        lambda: jsonbody.decode_any(raw),
    ):
        with pytest.raises(ApiError) as refused:
            read()
        assert (refused.value.status, refused.value.code) == (400, "BODY_NOT_UTF8")
        assert "UTF-8" in refused.value.message
        assert f"byte {at}" in refused.value.message


@pytest.mark.parametrize("body", [b"\xff\xfe{\x00}\x00", b"\xff\xfe"])
def test_a_utf16_body_is_not_utf8_either(body: bytes) -> None:
    """UTF-16 (with its byte order mark) is refused as not UTF-8 too."""
    with pytest.raises(ApiError) as exc:
        jsonbody.decode_any(body)
    assert (exc.value.status, exc.value.code) == (400, "BODY_NOT_UTF8")


JSON_TEXTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
).map(lambda value: json.dumps(value, ensure_ascii=False))
WIDE = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
BOMS = {
    "utf-16-le": b"\xff\xfe",
    "utf-16-be": b"\xfe\xff",
    "utf-32-le": b"\xff\xfe\x00\x00",
    "utf-32-be": b"\x00\x00\xfe\xff",
}


def every_read(body: bytes) -> list[tuple[int, str] | object]:
    """What each reader of a JSON body answers: a route's typed one, the batch's untyped one,
    an action's options."""
    answers: list[tuple[int, str] | object] = []
    for read in (
        lambda: jsonbody.decode(body, Shape, "INVALID_SHAPE", "The body is not a shape"),
        lambda: jsonbody.decode_any(body),
        lambda: decode_options(body),
    ):
        try:
            answers.append(read())
        except ApiError as exc:
            answers.append((exc.status, exc.code, exc.extra.get("encoding")))
    return answers


@settings(max_examples=200)
@given(text=JSON_TEXTS, encoding=st.sampled_from(WIDE), marked=st.booleans())
def test_json_in_utf16_or_utf32_is_said_to_be_not_utf8(
    text: str, encoding: str, marked: bool
) -> None:
    """JSON written in UTF-16 or UTF-32, with its byte order mark or without (a Windows tool's
    "Unicode"), answers 400 BODY_NOT_UTF8 naming the encoding on every reader of a body (before:
    without the mark its NULs are UTF-8, and the answer was MALFORMED_JSON, "not valid JSON")."""
    body = (BOMS[encoding] if marked else b"") + text.encode(encoding)
    name = encoding.upper().replace("-", "").replace("UTF", "UTF-")
    for got in every_read(body):
        assert got == (400, "BODY_NOT_UTF8", name), (body, got)


@settings(max_examples=200)
@given(text=JSON_TEXTS)
def test_a_utf8_byte_order_mark_before_json_is_ignored(text: str) -> None:
    """JSON saved by Notepad or PowerShell 5 (``-Encoding UTF8``) starts with a UTF-8 byte order
    mark: each reader answers as for the same JSON without it (RFC 8259 §8.1; before: 400
    MALFORMED_JSON, "not valid JSON", for JSON that is)."""
    body = text.encode()
    assert every_read(b"\xef\xbb\xbf" + body) == every_read(body)


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        # RFC 4627 §3: the NULs of the first two characters (ASCII) tell the encoding.
        (b"\x00\x00\x00{\x00\x00\x00}", "UTF-32BE"),  # 00 00 00 xx
        (b"\x00{\x00}", "UTF-16BE"),  # 00 xx 00 xx
        (b"{\x00\x00\x00}\x00\x00\x00", "UTF-32LE"),  # xx 00 00 00
        (b"{\x00}\x00", "UTF-16LE"),  # xx 00 xx 00
        (b'"\x00a\x00"\x00', "UTF-16LE"),
        (b"\x001", "UTF-16BE"),  # a number alone
        (b"{}", None),  # xx xx: UTF-8
        (b'{"a": 1}', None),
        (b"\x00\x01", None),  # NULs, but no character a JSON text starts with
        (b"x\x00", None),
    ],
)
def test_the_encoding_of_json_without_a_byte_order_mark_is_told_by_its_nuls(
    body: bytes, encoding: str | None
) -> None:
    """JSON in UTF-16 or UTF-32 without its mark is told by where its first bytes are NUL."""
    assert jsonbody.wide_encoding(body) == encoding


def test_the_bad_byte_after_a_utf8_byte_order_mark_is_counted_in_the_body_as_sent() -> None:
    """Latin-1 after a UTF-8 byte order mark: the byte named is where it is in the body the
    client sent, mark included (before: counted from after the mark, 3 too few)."""
    body = b'\xef\xbb\xbf{"name": "M\xfcller"}'
    assert body.index(b"\xfc") == 14
    for got in every_read_refusal(body):
        assert (got.status, got.code, got.extra.get("byte")) == (400, "BODY_NOT_UTF8", 14)
        assert "byte 14 is 0xfc" in got.message


def every_read_refusal(body: bytes) -> list[ApiError]:
    """The refusal of each reader of a JSON body (a route's typed one, the batch's untyped one,
    an action's options) for a ``body`` none of them takes."""
    refusals = []
    for read in (
        lambda: jsonbody.decode(body, Shape, "INVALID_SHAPE", "The body is not a shape"),
        lambda: jsonbody.decode_any(body),
        lambda: decode_options(body),
    ):
        with pytest.raises(ApiError) as refused:
            read()
        refusals.append(refused.value)
    return refusals


@pytest.mark.parametrize("body", [b"\x00\x01", b"\x00", b"\x01\x00", b"\x00\x00\x00\x00"])
def test_nul_bytes_that_no_encoding_makes_json_are_malformed(body: bytes) -> None:
    """Bytes with NULs whose first character no JSON text starts with are just not JSON."""
    for got in every_read(body):
        assert got == (400, "MALFORMED_JSON", None), (body, got)
