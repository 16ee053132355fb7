"""Which routes count against a token's open streams (``max_streams_per_token``): every one that
answers with a stream, downloads included, however its return type is written."""

from __future__ import annotations

from jobrunner.common.settings import load_settings
from jobrunner.services.api.app import create_app
from jobrunner.services.api.security.middleware import is_streaming_response


def test_every_stream_and_download_counts_against_the_token_cap() -> None:
    app = create_app(load_settings())
    counted = {
        handler.handler_name
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if is_streaming_response(handler)
    }
    assert counted == {
        "job_event_stream",  # a job's SSE stream (both paths)
        "job_updates",  # /api/jobs/stream
        "download_job_log",
        "download_artifact",  # answers Stream | Response[bytes] (a 304): a union
        "download_archive",
    }
