"""Encoding of events on the wire: JSON, tagged by ``type``.

Unknown event types and unknown fields are ignored (``decode`` returns ``None`` for an unknown
type), so old consumers keep working when new events appear.
"""

from __future__ import annotations

import msgspec

from jobrunner.contracts import events

MSG_ID_HEADER = "Nats-Msg-Id"

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[events.AnyEvent] = msgspec.json.Decoder(events.AnyEvent)
_type_probe = msgspec.json.Decoder(dict[str, object])
_KNOWN_TYPES = frozenset(t.__struct_config__.tag for t in events.EVENT_TYPES)


def encode(event: events.Publishable) -> bytes:
    return _encoder.encode(event)


# The decoder itself, for a loop that decodes a million events (the replay's feed): one C call
# for an event of a known type; whatever it raises, ``decode`` is to be asked next, which says
# what it was (an unknown type, ``None``; no event, an error).
decode_known = _decoder.decode


def headers(event: events.Publishable) -> dict[str, str]:
    """Headers to publish with: the event id de-duplicates publish retries in JetStream."""
    return {MSG_ID_HEADER: event.event_id}


def decode(data: bytes) -> events.AnyEvent | None:
    """Decode an event; ``None`` if its type is one this version does not know.

    Raises a ``msgspec.MsgspecError`` for data that is no event, which every consumer catches.
    """
    # One Python call on the usual path: a replay decodes a million events.
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError:
        if _names_a_known_type(data):
            raise
        return None
    except RecursionError:
        raise _too_deep() from None


def _names_a_known_type(data: bytes) -> bool:
    try:
        kind = _type_probe.decode(data).get("type")
    except RecursionError:
        raise _too_deep() from None
    # A "type" that is a list or an object names no event either (and is not hashable).
    return isinstance(kind, str) and kind in _KNOWN_TYPES


def _too_deep() -> msgspec.DecodeError:
    # msgspec's own error for JSON nested too deeply; as a DecodeError, consumers set the
    # message aside instead of stopping on it.
    return msgspec.DecodeError("JSON is nested too deeply to be an event")
