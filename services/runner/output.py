"""From raw pipe bytes to log lines: splitting, decoding, level and progress parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
LEVEL_RE = re.compile(
    r"^\s*"
    # an optional timestamp: 2025-12-27 12:15:00[,123], 2025-12-27T12:15:00Z, [12:15:00], 12:15:00
    r"(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s+"
    r"|\[?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\]?\s+)?"
    r"[\[(]?(?P<level>DEBUG|INFO|SUCCESS|WARNING|WARN|ERROR|CRITICAL|FATAL)[\])]?(?=[\s:|-]|$)",
    re.IGNORECASE,
)
LEVEL_ALIASES = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}
DEFAULT_PROGRESS_RE = re.compile(r"\[\s*(?P<current>\d+)\s*/\s*(?P<total>\d+)\s*\]")
SPLIT_MARKER = " ↩"  # shown at the end of a line the runner had to split


def parse_level(text: str, default: str = "INFO", pattern: re.Pattern[str] | None = None) -> str:
    """The level where the tool puts it (line start, or after a timestamp), not anywhere."""
    match = (pattern or LEVEL_RE).match(ANSI_RE.sub("", text[:200]))
    if not match:
        return default
    level = match.group("level").upper()
    return LEVEL_ALIASES.get(level, level)


@dataclass(frozen=True)
class Progress:
    current: int
    total: int


def parse_progress(text: str, pattern: re.Pattern[str] = DEFAULT_PROGRESS_RE) -> Progress | None:
    match = pattern.search(text)
    if not match:
        return None
    current, total = int(match.group("current")), int(match.group("total"))
    if total <= 0 or current < 0:
        return None
    return Progress(current, total)


def clean_text(raw: bytes) -> str:
    """Bytes that are not UTF-8 become U+FFFD and NUL becomes ␀: replaced, never dropped."""
    text = raw.decode("utf-8", errors="replace").replace("\x00", "␀")
    if "\r" in text:
        # A carriage-return progress bar: keep what a terminal would show last.
        parts = [p for p in text.split("\r") if p]
        text = parts[-1] if parts else ""
    return text


class LineSplitter:
    """Feeds chunks, yields complete lines; a line longer than ``max_bytes`` is split."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(64, max_bytes)
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        lines: list[str] = []
        start = 0
        buf = self._buffer
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            raw = bytes(buf[start:end])
            start = end + 1
            if len(raw) > self.max_bytes:
                lines.extend(self._split(raw))
            else:
                lines.append(clean_text(raw))
        del buf[:start]
        while len(buf) > self.max_bytes:
            lines.append(self._cut(bytes(buf[: self.max_bytes])))
            del buf[: self.max_bytes]
        return lines

    def close(self) -> list[str]:
        """The unterminated rest when the stream ends."""
        if not self._buffer:
            return []
        rest = clean_text(bytes(self._buffer))
        self._buffer.clear()
        return [rest]

    def _split(self, raw: bytes) -> list[str]:
        pieces = [raw[i : i + self.max_bytes] for i in range(0, len(raw), self.max_bytes)]
        return [self._cut(p) for p in pieces[:-1]] + [clean_text(pieces[-1])]

    def _cut(self, piece: bytes) -> str:
        # Do not cut a UTF-8 sequence in half: back off to a character boundary is not worth the
        # complexity here; the replacement character makes any cut visible.
        return clean_text(piece) + SPLIT_MARKER
