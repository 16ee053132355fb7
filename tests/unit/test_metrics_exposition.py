"""The metrics' pure parts: settings syntax, label folding, the service label, merging, and a
peer's deadline (a small HTTP server of the test's own: no NATS or Postgres involved)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobrunner.common import metrics
from jobrunner.common.metricsconfig import (
    MetricsAddressError,
    is_loopback_host,
    parse_address,
    parse_peers,
)
from jobrunner.common.metricsexposition import PeerMetrics, merge, render, with_service
from jobrunner.services.runner.lockmetrics import lock_label


def test_address_is_host_and_port() -> None:
    """``metrics_address`` takes host:port, IPv6 in brackets."""
    assert parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_address("[::1]:0") == ("::1", 0)


@pytest.mark.parametrize("text", ["", "9101", "host:", ":9101", "h:65536", "h:-1", "h:٣"])
def test_a_malformed_address_is_refused_with_a_sentence(text: str) -> None:
    """A metrics_address that is no host:port stops the start, naming the setting."""
    with pytest.raises(MetricsAddressError, match="metrics_address"):
        parse_address(text)


@given(st.text(max_size=60))
def test_any_address_text_parses_or_is_refused_clearly(text: str) -> None:
    """Whatever is configured, the address parses or raises the setting's own error."""
    try:
        host, port = parse_address(text)
    except MetricsAddressError:
        return
    assert host
    assert 0 <= port <= 65535


@given(st.text(max_size=80))
def test_any_peers_text_parses_or_is_refused_clearly(text: str) -> None:
    """Whatever metrics_peers holds, it parses to http(s) URLs or raises the setting's error."""
    try:
        peers = parse_peers(text)
    except MetricsAddressError:
        return
    assert all(url.startswith(("http://", "https://")) for url in peers.values())


def test_peers_name_their_urls() -> None:
    """``name=url`` pairs, comma-separated, trailing slashes dropped."""
    assert parse_peers("runner=http://127.0.0.1:1/, projector=http://127.0.0.1:2") == {
        "runner": "http://127.0.0.1:1",
        "projector": "http://127.0.0.1:2",
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("metrics.example.com", False),
    ],
)
def test_only_loopback_listeners_count_as_private(host: str, loopback: bool) -> None:
    """A listener anywhere but on loopback is warned about at start (it has no token)."""
    assert is_loopback_host(host) is loopback


def test_unknown_job_types_and_locks_fold_into_other() -> None:
    """A label value not in the configuration becomes ``other``: series stay bounded."""
    known = metrics.KnownLabels()
    known.learn(["scraper"], ["datev"])
    assert (known.job_type("scraper"), known.job_type("x" * 500)) == ("scraper", "other")
    assert (known.lock("datev"), known.lock("anything")) == ("datev", "other")


def test_lock_label_of_bucket_keys() -> None:
    """A job without a lock counts under ``none``, a lock not configured under ``other``."""
    known = {"datev_sheet": "datev-sheet"}
    assert lock_label("slot.datev_sheet", known) == "datev-sheet"
    assert lock_label("slot.someone_else", known) == "other"
    assert lock_label("job.abc", known) == "none"


def _families(count: float) -> list[object]:
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc(count)
    return list(registry.collect())


def test_two_services_merge_into_one_family_with_a_service_label_each() -> None:
    """The same metric from two services is one family, told apart by ``service``."""
    merged = merge([*with_service(_families(1), "api"), *with_service(_families(2), "runner")])
    text = render(merged).decode()
    assert text.count("# TYPE things_total counter") == 1
    parsed = {
        s.labels["service"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "things_total"
    }
    assert parsed == {"api": 1.0, "runner": 2.0}


def test_a_series_that_names_its_service_keeps_it() -> None:
    """A peer's series already labelled (by its own listener) are not relabelled."""
    families = list(with_service(with_service(_families(1), "runner"), "api"))
    assert families[0].samples[0].labels["service"] == "runner"  # type: ignore[attr-defined]


async def _slow_peer(delay: float) -> AsyncIterator[str]:
    body = generate_latest(_registry_with_peer_metric())

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delay)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def _registry_with_peer_metric() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("peer_things", "Things the peer counted.", registry=registry).inc(3)
    return registry


PEER_TIMEOUT = 1.0


async def _scrape_peer_answering_after(delay: float) -> dict[str, float]:
    async for url in _slow_peer(delay):
        async with PeerMetrics(PEER_TIMEOUT) as peers:
            families = await peers.all_families("api", {"runner": url})
        return {
            f"{s.name}{{{s.labels.get('service')}}}": s.value
            for family in families
            for s in family.samples
            if s.name in ("jobrunner_metrics_peer_up", "peer_things_total")
        }
    raise AssertionError("unreachable")


async def test_a_peer_answering_just_within_the_deadline_is_included() -> None:
    """A service answering a little before metrics_peer_timeout_seconds is in the answer."""
    seen = await _scrape_peer_answering_after(PEER_TIMEOUT * 0.5)
    assert seen == {"jobrunner_metrics_peer_up{runner}": 1.0, "peer_things_total{runner}": 3.0}


async def test_a_peer_answering_just_after_the_deadline_is_reported_down() -> None:
    """A service slower than metrics_peer_timeout_seconds is left out, with peer_up 0."""
    seen = await _scrape_peer_answering_after(PEER_TIMEOUT * 1.5)
    assert seen == {"jobrunner_metrics_peer_up{runner}": 0.0}


def test_metrics_answer_while_the_read_models_are_rebuilt() -> None:
    """/metrics reads no table, so the read-model gate lets it through during a rebuild."""
    from jobrunner.services.api.readmodelgate import exempt

    assert exempt("/metrics")
