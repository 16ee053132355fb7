"""A JSON Schema (draft 2020-12) of every event, generated from the msgspec Structs.

``jobrunner schema events`` prints it. Consumers in other languages can generate their types
from it; the versioning rule in ``contracts.events`` says how it may change.
"""

from __future__ import annotations

from typing import Any

import msgspec

from jobrunner.contracts import events
from jobrunner.contracts.names import KIND_BY_EVENT


def event_schema() -> dict[str, Any]:
    (refs,), components = msgspec.json.schema_components(
        [events.AnyEvent], ref_template="#/$defs/{name}"
    )
    for event_type in events.EVENT_TYPES:
        definition = components[event_type.__name__]
        # Say on which subject each event travels (documentation only; not a constraint).
        aggregate = (
            "batch.<batch_id>" if issubclass(event_type, events.BatchEvent) else "job.<job_id>"
        )
        definition["x-subject"] = f"<prefix>.{aggregate}.{KIND_BY_EVENT[event_type]}"
        # Unknown fields are allowed on purpose: newer producers may add fields (with defaults).
        definition.setdefault("additionalProperties", True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://jobrunner.invalid/schemas/events.json",
        "title": "jobrunner events",
        "description": (
            "Every event on the <PREFIX>_EVENTS JetStream stream, JSON encoded and tagged by "
            "'type'. Consumers must ignore event types and fields they do not know."
        ),
        **refs,
        "$defs": components,
    }
