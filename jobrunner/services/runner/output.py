"""From raw pipe bytes to log lines: splitting, decoding, level, progress and result parsing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from jobrunner.common.linecleaning import REMOVED_WITHOUT_C1, clean_line
from jobrunner.common.loglevels import LEVEL_RE, LEVEL_SCAN_CHARS, level_of_word

# A C1 control in UTF-8 (U+0080-U+009F): 0xC2 and a byte of 0x80-0x9F.
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")
# LEVEL_RE over a block of lines at once (MULTILINE; no whitespace run crosses a line break):
# one match per line, whose group is the level word where the line has one, else empty.
_LEVEL_PER_LINE_RE = re.compile(
    r"^(?:[^\S\n]*"
    r"(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?[^\S\n]+"
    r"|\[?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\]?[^\S\n]+)?"
    r"[\[(]?(DEBUG|INFO|SUCCESS|WARNING|WARN|ERROR|CRITICAL|FATAL)[\])]?(?=[\s:|-]|$))?[^\n]*",
    re.IGNORECASE | re.MULTILINE,
)
DEFAULT_PROGRESS_RE = re.compile(r"\[\s*(?P<current>\d+)\s*/\s*(?P<total>\d+)\s*\]")
# Colour and style codes (SGR: ESC [ ... m), the sequences clean_text keeps.
SGR_RE = re.compile(r"\x1b\[[0-9;]*m")
SPLIT_MARKER = " ↩"  # shown at the end of a line the runner had to split
# Progress counts land in the read model's integer columns; a larger one would fail the
# projector's batch, so the runner does not report it (issue 11: clean at the source).
MAX_PROGRESS_COUNT = 2**31 - 1
# A result value that becomes a JSON number: ASCII digits only (str.isdigit() also takes "²",
# which int() refuses), no leading zero (a postcode such as 01067 keeps its zero), and at most
# 15 digits, below 2^53, so that the web UI's JavaScript shows the number exactly too.
_PLAIN_INTEGER = re.compile(r"0|[1-9][0-9]{0,14}")
MIN_LINE_BYTES = 64  # a smaller max_line_bytes is raised to this


def parse_level(text: str, default: str = "INFO", pattern: re.Pattern[str] | None = None) -> str:
    """The level where the tool puts it (line start, or after a timestamp), not anywhere.

    A job type's ``level_pattern`` replaces the default; it must have a group named ``level``.
    """
    match = (pattern or LEVEL_RE).match(text[:LEVEL_SCAN_CHARS])
    if not match:
        return default
    return level_of_word(match.group("level") or "", default)


class _LevelWords(dict[str, str]):
    """Level word as matched -> level, remembered (few distinct spellings ever occur)."""

    def __missing__(self, word: str) -> str:
        level = level_of_word(word)
        if len(self) < 4096:  # bounded: a tool cannot grow it without limit
            self[word] = level
        return level


_LEVEL_WORDS = _LevelWords()


def levels_of_lines(lines: list[str], block: str | None = None) -> list[str]:
    """``parse_level`` of each line (default pattern, default INFO), in one regex pass over the
    block (``block``: the lines joined by line breaks, when the caller has it): the cost per
    line is a list item, not a function call and a match."""
    if not lines:
        return []
    if block is None:
        block = "\n".join(lines)
    same = _same_level_word(lines[0], block, len(lines))
    if same is not None:
        return [same] * len(lines)
    groups = _LEVEL_PER_LINE_RE.findall(block)
    if len(groups) != len(lines):  # cannot happen; the per-line way is the reference
        return [parse_level(line) for line in lines]
    words = _LEVEL_WORDS
    levels = [words[g] for g in groups]
    if max(map(len, lines)) > LEVEL_SCAN_CHARS:
        # parse_level sees only a line's start: a long line is judged the same way.
        for i, line in enumerate(lines):
            if len(line) > LEVEL_SCAN_CHARS:
                levels[i] = parse_level(line)
    return levels


def _same_level_word(first: str, block: str, count: int) -> str | None:
    """The level of every line of ``block`` when each one starts with the same level word and a
    space (``INFO ...``: a tool's own log lines), found by counting, not matching: the regex
    costs about a microsecond a line. None when not (the regex decides). Exact: such a line
    has no timestamp or bracket before the word, and the space ends the word, so the regex
    would match the word at its start, as ``parse_level`` does within the first characters."""
    word, space, _ = first.partition(" ")
    # (The longest level word has 8 letters; ASCII: "SUCCEß".upper() is "SUCCESS", which the
    # regex does not read as the word.)
    if not space or len(word) > 8 or not word.isascii():
        return None
    level = _LEVEL_WORDS_EXACT.get(word.upper())
    if level is None or block.count(f"\n{word} ") != count - 1:
        return None
    return level


# Each level word, in capitals, as the regex would read it at a line's start.
_LEVEL_WORDS_EXACT = {
    word: level_of_word(word)
    for word in ("DEBUG", "INFO", "SUCCESS", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")
}


@dataclass(frozen=True)
class Progress:
    current: int | None = None
    total: int | None = None
    percent: float | None = None
    phase: str | None = None
    message: str | None = None


def percent_of(current: int, total: int) -> float:
    """``current`` of ``total`` in percent, one decimal; never raises for huge numbers (a tool
    may print any number of digits), the bounds are applied later (bounds.bounded_progress)."""
    try:
        return round(100 * current / total, 1)
    except OverflowError:  # the quotient is beyond a float: as good as infinitely many
        return 100.0 if (current > 0) == (total > 0) else 0.0


def parse_progress(text: str, pattern: re.Pattern[str] = DEFAULT_PROGRESS_RE) -> Progress | None:
    """``[42/127]`` (or the job type's ``progress_pattern``: groups ``current`` and ``total``)."""
    match = pattern.search(text)
    if not match:
        return None
    groups = match.groupdict()
    try:
        current = int(groups["current"]) if groups.get("current") is not None else None
        total = int(groups["total"]) if groups.get("total") is not None else None
        percent = float(groups["percent"]) if groups.get("percent") is not None else None
    except ValueError:
        return None
    if total is not None and (total <= 0 or current is None or current < 0):
        return None  # "[0/0]" is no progress
    if not all(n is None or 0 <= n <= MAX_PROGRESS_COUNT for n in (current, total)):
        return None  # a number in the text that only looks like a count
    if current is not None and total:
        percent = percent_of(current, total)
    if percent is not None and not math.isfinite(percent):
        return None
    if current is None and percent is None:
        return None
    return Progress(current=current, total=total, percent=clamp_percent(percent))


def clamp_percent(percent: float | None) -> float | None:
    """A tool counting past its total (or under zero) shows 100 % (or 0 %), never more."""
    return None if percent is None else min(100.0, max(0.0, percent))


def parse_result(text: str, pattern: re.Pattern[str]) -> dict[str, Any] | None:
    """A result summary line (the job type's ``result_pattern``): named groups become fields.

    Plain integers become numbers; without a ``summary`` group the whole line is the summary.
    """
    match = pattern.search(text)
    if not match:
        return None
    result: dict[str, Any] = {}
    for name, value in match.groupdict().items():
        if value is None:
            continue
        result[name] = int(value) if _PLAIN_INTEGER.fullmatch(value) else value
    result.setdefault("summary", text.strip())
    return result


def clean_text(raw: bytes, may_hold_c1: bool = True) -> str:
    """Bytes that are not UTF-8 become U+FFFD, then the line is cleaned as every stored line is
    (``common.linecleaning.clean_line``: NUL shown as ␀, colour codes kept, every other escape
    sequence and C1 control removed, a carriage-return progress bar's last state kept).
    ``may_hold_c1`` False: the caller knows ``raw`` holds no C1 control (it looked at the whole
    read at once)."""
    text = raw.decode("utf-8", errors="replace")
    return clean_line(text, holds_c1=may_hold_c1 and _has_c1(raw))


def _has_c1(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` holds a C1 control (in UTF-8; a lone byte 0x80-0x9F is no UTF-8 and
    becomes U+FFFD). Mostly answered by memchr, as fast as the pipe: only a text with a
    character of U+0080-U+00BF (``°``, ``§``, a non-breaking space) needs the regex's scan."""
    return b"\xc2" in raw and _C1_UTF8.search(raw) is not None


def without_colours(text: str) -> str:
    """The text as a reader sees it: what levels, progress and results are parsed from."""
    return SGR_RE.sub("", text) if "\x1b" in text else text


def _char_boundary(buf: bytes | bytearray, cut: int) -> int:
    """Move a cut back so it does not split a UTF-8 sequence."""
    i = cut
    while i > cut - 3 and i > 0 and i < len(buf) and (buf[i] & 0xC0) == 0x80:
        i -= 1
    return i if i > 0 and (i == len(buf) or (buf[i] & 0xC0) != 0x80) else cut


# A long line is cut into pieces before cleaning: a cut inside a colour code (or any short
# sequence, or an OSC 8 link's address) would leave its start to be removed from one piece and
# its tail ("31m", the rest of the address) shown as text in the next. A sequence begun this few
# bytes before the cut and not finished by it goes whole into the next piece instead (a colour
# code's parameters fit several times over); half a piece at most, so every piece keeps text.
_SEQUENCE_CUT_WINDOW = 64
# A sequence the cut would end unfinished, in UTF-8 (U+009C is 0xC2 0x9C). Searched from the
# window's start, the leftmost one that reaches the cut is the outermost.
_UNFINISHED_SEQUENCE = re.compile(
    rb"(?:\x1b(?:\[[0-?]*)?|\xc2\x9b[0-?]*)[ -/]*\Z"  # CSI, nF, a lone ESC
    rb"|(?:\x1b\]|\xc2\x9d)(?:[^\x07\x1b\r\n\x18\x1a\xc2]|\xc2[^\x9c])*\Z"  # OSC
    rb"|(?:\x1b[PX^_]|\xc2[\x90\x98\x9e\x9f])(?:[^\x1b\r\n\x18\x1a\xc2]|\xc2[^\x9c])*\Z"
)


def _piece_end(buf: bytes | bytearray, max_bytes: int) -> int:
    """Where a piece of at most ``max_bytes`` of ``buf`` ends: not inside a UTF-8 character,
    nor inside a short escape sequence."""
    cut = _char_boundary(buf, max_bytes)
    # From 1: a sequence at the piece's start cannot move, the piece would be empty.
    begun = max(1, cut - min(_SEQUENCE_CUT_WINDOW, max_bytes // 2))
    unfinished = _UNFINISHED_SEQUENCE.search(buf, begun, cut)
    return unfinished.start() if unfinished else cut


def split_text(text: str, max_bytes: int) -> list[str]:
    """``text`` in pieces of at most ``max_bytes`` UTF-8 bytes, never cut inside a character;
    every piece but the last ends with SPLIT_MARKER (not counted in ``max_bytes``)."""
    if len(text) * 4 <= max_bytes:  # no character is longer than 4 bytes: it fits
        return [text]
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return [text]
    pieces: list[str] = []
    while len(data) > max_bytes:
        cut = _piece_end(data, max_bytes)
        piece = data[:cut].decode("utf-8", "replace")
        if "\x1b" in piece:
            # A colour code too long to move whole to the next piece: its cut start goes.
            piece = REMOVED_WITHOUT_C1.sub("", piece)
        pieces.append(piece + SPLIT_MARKER)
        data = data[cut:]
    pieces.append(data.decode("utf-8", "replace"))
    return pieces


def _cleaned_pieces(raw: bytes, max_bytes: int, continued: bool) -> list[str]:
    """A raw piece cleaned; cut again when cleaning made it longer (a byte that is not UTF-8
    becomes the 3-byte U+FFFD, NUL the 3-byte ␀)."""
    pieces = split_text(clean_text(raw), max_bytes)
    if continued:
        pieces[-1] += SPLIT_MARKER
    return pieces


def split_line(raw: bytes, max_bytes: int) -> list[str]:
    """One line of raw output as cleaned pieces of at most ``max_bytes`` UTF-8 bytes each (plus
    SPLIT_MARKER on every piece but the last); joined without their markers they are the line."""
    pieces: list[str] = []
    while len(raw) > max_bytes:
        cut = _piece_end(raw, max_bytes)
        pieces.extend(_cleaned_pieces(raw[:cut], max_bytes, continued=True))
        raw = raw[cut:]
    pieces.extend(_cleaned_pieces(raw, max_bytes, continued=False))
    return pieces


class LineSplitter:
    """Feeds chunks, yields complete lines; a line longer than ``max_bytes`` is split and each
    piece but the last ends with SPLIT_MARKER. Memory stays bounded by ``max_bytes``, and every
    piece's text is at most ``max_bytes`` bytes of UTF-8 (SPLIT_MARKER aside).

    ``transient`` is set to the latest state of a carriage-return progress bar that has not yet
    ended its line: good for progress, not a log line of its own.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(MIN_LINE_BYTES, max_bytes)
        # Cleaning turns one raw byte into at most 3 bytes of UTF-8: a raw line up to this long
        # needs no second look.
        self._surely_fits = self.max_bytes // 3
        self._buffer = bytearray()
        self.transient: str | None = None

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        buf = self._buffer
        start = 0
        lines = self._plain_lines(buf)
        if lines is None:
            lines = []
            # Once for the read, not for each line: most reads hold no C1 control, but many a
            # character (°, a non-breaking space) whose UTF-8 begins as one's does.
            read_holds_c1 = _has_c1(buf)
        else:
            start = buf.rfind(b"\n") + 1
            read_holds_c1 = False  # no complete line is left to clean
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            raw = bytes(buf[start:end])
            start = end + 1
            if len(raw) <= self._surely_fits:
                # clean_text, inlined: a Python call a line fewer in a flood (bench.line_cleaning)
                holds_c1 = read_holds_c1 and _has_c1(raw)
                lines.append(clean_line(raw.decode("utf-8", "replace"), holds_c1))
            else:
                lines.extend(split_line(raw, self.max_bytes))
        del buf[:start]
        last_cr = buf.rfind(b"\r")
        if last_cr >= 0:
            # A progress bar redrawing itself: only its latest state matters. A state that
            # shows nothing ("\r\r", or "\r\x1b[2K\r": escape sequences alone) leaves the state
            # before it on screen (and the one clean_text keeps when the line ends, however the
            # reads were cut; no sequence goes past a carriage return, so each state cleans
            # alone as within the line).
            end = last_cr
            prev_cr = buf.rfind(b"\r", 0, end)
            state = bytes(buf[prev_cr + 1 : end])
            shown = clean_text(state) if state else ""
            while prev_cr >= 0 and not shown:
                end, prev_cr = prev_cr, buf.rfind(b"\r", 0, prev_cr)
                state = bytes(buf[prev_cr + 1 : end])
                shown = clean_text(state) if state else ""
            if state.strip():
                self.transient = shown
            if last_cr > end + 1:
                del buf[end + 1 : last_cr]  # a run of empty redraws: one is as good as many
            if prev_cr >= 0:
                del buf[: prev_cr + 1]
        while len(buf) > self.max_bytes:
            cut = _piece_end(buf, self.max_bytes)
            lines.extend(_cleaned_pieces(bytes(buf[:cut]), self.max_bytes, continued=True))
            del buf[:cut]
        return lines

    def _plain_lines(self, buf: bytearray) -> list[str] | None:
        """The complete lines of ``buf`` at once when cleaning could change none of them (valid
        UTF-8, no NUL, escape, C1 control or carriage return, none longer than surely fits):
        what cleaning each line would give, at a fraction of the cost per line. None when one
        needs cleaning or splitting, or no line is complete."""
        end = buf.rfind(b"\n")
        if end < 0:
            return None
        block = bytes(buf[:end])
        if b"\r" in block or b"\x1b" in block or b"\x00" in block or _has_c1(block):
            return None
        if len(block) > self._surely_fits and max(map(len, block.split(b"\n"))) > self._surely_fits:
            return None
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text.split("\n")

    def close(self) -> list[str]:
        """The unterminated rest when the stream ends."""
        if not self._buffer:
            return []
        rest = clean_text(bytes(self._buffer))
        self._buffer.clear()
        return split_text(rest, self.max_bytes) if rest else []
