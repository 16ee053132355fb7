"""Events decoded from a message that holds no NUL, projected without the NUL checks.

Postgres cannot store U+0000, so the projection cleans every string it stores
(``storable.text``): a Python call or a test per string, several per event, and a replay projects
a million events. JSON cannot carry a NUL as such (msgspec refuses a raw control character in a
string); it can only be written ``\\u0000``. A message without those six bytes therefore holds no
NUL in any string or key, and the feed decodes it into these types instead of the contract's:
their projections store every string as decoded. The feed looks for a backslash first: a message
without one cannot hold the six bytes, and one with a backslash but no ``\\u0000`` (any other
escape) stays on this fast path too. A message with them (or a false alarm: an escaped backslash
before ``u0000``) is decoded into the contract's types and cleaned, as before.

Each type accepts exactly what the contract's type of its tag accepts, or less (what it refuses
is decoded again by the contract's decoder, so the outcome, its error text included, is the
contract's): ``NulFreeJobRequested``, ``NulFreeStatusChanged``, ``NulFreeProgressReported``,
``NulFreeCancelRequested`` and ``NulFreeWebhookAttempted`` are the contract's types under another
name, ``NulFreeLineLogged`` decodes a line as a plain tuple rather than a ``LogLine``
(a tuple of exactly five, where a ``LogLine`` also takes more, and of the runner's streams and
levels only), so its rows are built without a Python step per line.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from jobrunner.common.loglevels import Level, Stream
from jobrunner.contracts import events

# The six bytes of a NUL written in JSON: none of them, no NUL anywhere in the message.
JSON_NUL = b"\\u0000"

# A line as the contract's ``LogLine`` lays it out on the wire: seq, stream, level, timestamp, text.
# Its stream and level as the runner writes them, as literals: msgspec hands out its one string
# of each value instead of a new one a line (made, then freed, twice a line of a replay's
# millions). A line with any other value (a foreign publisher's) is refused here and decoded by
# the contract's decoder, which takes any string.
LineFields = tuple[int, Stream, Level, datetime, str]


class NulFreeLineLogged(events.Event, frozen=True, kw_only=True, tag="LineLogged", gc=False):
    """A ``LineLogged`` whose lines are tuples in the contract's ``LogLine`` order."""

    lines: list[LineFields]


class NulFreeJobRequested(events.JobRequested, frozen=True, kw_only=True, tag="JobRequested"):
    """A ``JobRequested`` whose message holds no NUL."""


class NulFreeStatusChanged(events.StatusChanged, frozen=True, kw_only=True, tag="StatusChanged"):
    """A ``StatusChanged`` whose message holds no NUL."""


class NulFreeProgressReported(
    events.ProgressReported, frozen=True, kw_only=True, tag="ProgressReported"
):
    """A ``ProgressReported`` whose message holds no NUL."""


class NulFreeCancelRequested(
    events.CancelRequested, frozen=True, kw_only=True, tag="CancelRequested"
):
    """A ``CancelRequested`` whose message holds no NUL."""


class NulFreeWebhookAttempted(
    events.WebhookAttempted, frozen=True, kw_only=True, tag="WebhookAttempted"
):
    """A ``WebhookAttempted`` whose message holds no NUL."""


NulFreeEvent = (
    NulFreeLineLogged
    | NulFreeJobRequested
    | NulFreeStatusChanged
    | events.JobArchived
    | NulFreeCancelRequested
    | NulFreeProgressReported
    | NulFreeWebhookAttempted
    | events.ArtifactStored
    | events.AnyBatchEvent
)
# One C call for a message of a known type; whatever it raises, the contract's decoder is to be
# asked next (codec.decode_known, then codec.decode), which says what the message was.
decode = msgspec.json.Decoder(NulFreeEvent).decode
