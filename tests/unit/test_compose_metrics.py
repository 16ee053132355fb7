"""compose.yaml's metrics: every jobrunner service serves its own /metrics, and the API's
GET /metrics reaches the services it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from jobrunner.common.metricsconfig import parse_address, parse_peers

COMPOSE = Path(__file__).parents[2] / "compose.yaml"
SERVICES = ("api", "runner", "projector", "notifier")


def environment(service: str) -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    return dict(compose["services"][service]["environment"])


def test_every_service_in_compose_serves_its_own_metrics() -> None:
    """Each jobrunner container listens for Prometheus on the compose network's port 9100."""
    for service in SERVICES:
        host, port = parse_address(environment(service)["JOBRUNNER_METRICS_ADDRESS"])
        assert (host, port) == ("0.0.0.0", 9100), service


def test_the_compose_api_adds_the_services_it_names_to_its_metrics() -> None:
    """The API's peers are compose services at their metrics port; scaled runners are not
    among them (one name for several containers would answer for a random one)."""
    peers = parse_peers(environment("api")["JOBRUNNER_METRICS_PEERS"])
    assert set(peers) == {"projector", "notifier"}
    for name, url in peers.items():
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (name, 9100)
    # The API keeps the settings every service shares.
    assert "JOBRUNNER_NATS_URL" in environment("api")
