"""``jobrunner events``: the raw event history in the terminal, as JSON lines or readable."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgspec

from jobrunner.common import audit, eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.terminaltext import visible
from jobrunner.contracts.names import Names

PAGE = 1000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_SEQUENCE = 2**64 - 1  # JetStream stream sequences are unsigned 64-bit


def parse_since(raw: str | None, now: datetime | None = None) -> tuple[int | None, datetime | None]:
    """``--since``: a stream sequence (``1234``), an ISO 8601 time, or an age (``15m``, ``2h``)."""
    if raw is None:
        return None, None
    raw = raw.strip()
    try:
        return _parse_since(raw, now)
    except _OutsideYears:
        raise ValueError(
            f"--since {raw!r} lies outside the years 1-9999 in UTC, the times a stream can "
            "start at: give a time within them, or a stream sequence"
        ) from None
    except (ValueError, OverflowError):
        # Also what is almost right: "²", a sequence past 2^64, an age older than year 1.
        raise ValueError(
            f"--since {raw!r}: give a stream sequence, an ISO 8601 time or an age like 15m"
        ) from None


def _parse_since(raw: str, now: datetime | None) -> tuple[int | None, datetime | None]:
    if raw.isdigit():
        seq = int(raw)
        if seq > MAX_SEQUENCE:
            raise ValueError("beyond any stream sequence")
        return seq, None
    if match := _RELATIVE.match(raw):
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return None, (now or datetime.now(UTC)) - delta
    at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if not at.tzinfo:
        return None, at.replace(tzinfo=UTC)
    try:
        # In UTC, as NATS takes a consumer's start time: year 1 at +14:00 has no such datetime
        # (a clear error above, not an OverflowError traceback where the consumer is made).
        return None, at.astimezone(UTC)
    except OverflowError:
        raise _OutsideYears from None


class _OutsideYears(ValueError):
    """An ISO 8601 time whose UTC instant no datetime holds (before year 1, after 9999)."""


_encoder = msgspec.json.Encoder()
# JSON escapes only C0 controls; a terminal also obeys the C1 ones (U+009B is a CSI) and bidi
# overrides reorder what follows them. Outside a string JSON holds none of these characters, so
# their \uXXXX escape is the same JSON value, shown rather than obeyed.
_ESCAPED_IN_JSON = {
    code: f"\\u{code:04x}"
    for code in [*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def json_line(stored: audit.StoredEvent) -> str:
    """One event as a line of JSON, safe to print on a terminal (``_ESCAPED_IN_JSON``)."""
    return _encoder.encode(stored).decode().translate(_ESCAPED_IN_JSON)


def readable(stored: audit.StoredEvent) -> str:
    """One event for people: sequence, time, job, type, the interesting fields; lines below.

    What the event holds is shown, never obeyed: a stored line, a result, an error message or a
    foreign event's job id may hold escape sequences and control characters (``visible``).
    """
    event: dict[str, Any] = stored.event if isinstance(stored.event, dict) else {}
    kind = str(event.get("type", "?"))
    job = str(event.get("job_id", ""))
    head = f"#{stored.stream_seq:<7} {stored.time:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {job}  {kind}"
    skip = {"type", "job_id", "event_id", "occurred_at", "version", "lines"}
    fields = " ".join(
        f"{k}={_encoder.encode(v).decode() if not isinstance(v, str) else v}"
        for k, v in event.items()
        if k not in skip and v not in (None, {}, [])
    )
    out = visible(f"{head}  {fields}".rstrip())
    lines = event.get("lines")
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, list) and len(line) >= 5:
            # !s: a stored line may hold any JSON (None cannot be padded), shown as it is.
            out += "\n          " + visible(
                f"{line[0]!s:>6} {line[1]!s:<6} {line[2]!s:<7} {line[4]}"
            )
    return out


async def print_events(
    settings: Settings,
    job_id: str | None,
    since: str | None,
    follow: bool,
    out: TextIO = sys.stdout,
    as_json: bool | None = None,
) -> int:
    start_seq, start_time = parse_since(since)
    as_json = not out.isatty() if as_json is None else as_json
    show = json_line if as_json else readable
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "events-cli")
    js = nc.jetstream()
    try:
        if follow:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async for stored in audit.follow_events(js, names, job_id, start_seq, start_time, stop):
                print(show(stored), file=out, flush=True)
            return 0
        while True:
            page = await audit.read_events(js, names, job_id, start_seq, start_time, PAGE)
            for stored in page:
                print(show(stored), file=out)
            if len(page) < PAGE:
                break
            start_seq, start_time = page[-1].stream_seq + 1, None
        out.flush()
        return 0
    finally:
        await eventstore.close(nc)
