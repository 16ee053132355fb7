"""Review of s26start (fix pass): the 'closed for good' lines of eventstore.connect still pass
the connection's name as an explicit service=, overriding the process's bound service name
(the API's 'api-reader', the runner's 'runner-bulk'), which f09527d said it had renamed."""

from __future__ import annotations

import structlog

from jobrunner.common import eventstore


def test_the_closed_for_good_line_keeps_the_bound_service_name() -> None:
    structlog.contextvars.bind_contextvars(service="api")
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            eventstore.log_closed_for_good("api-reader", "test")
    finally:
        structlog.contextvars.unbind_contextvars("service")
    assert logs, logs
    assert all(e.get("service") == "api" for e in logs), logs
    assert all(e.get("connection") == "api-reader" for e in logs), logs
