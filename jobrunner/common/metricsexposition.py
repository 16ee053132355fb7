"""Serving the metrics: a service's own listener, the ``service`` label, and the API's view of
all services together (README "Metrics").

Every series carries ``service`` (api, runner, projector, notifier), so the same metric from two
processes (``process_cpu_seconds_total`` above all) stays apart once merged. A service's own
listener (``metrics_address``) is prometheus_client's HTTP server on a daemon thread: a scrape
never waits for the service's event loop, so a service busy or stuck on NATS still answers.
The API's ``/metrics`` adds the services named in ``metrics_peers`` (``jobrunner up`` sets it),
each scraped with a deadline: one that does not answer in time is reported by
``jobrunner_metrics_peer_up`` = 0 instead of holding up the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from jobrunner.common import looptime
from jobrunner.common.metricsconfig import is_loopback_host, parse_address

log = structlog.get_logger()

SERVICE_LABEL = "service"
# Bounds what one peer's answer may hold: a peer is our own service, but a wrong address could
# name anything, and the API keeps the whole answer in memory while it merges.
MAX_PEER_BYTES = 8 * 1024 * 1024


def with_service(families: Iterable[Metric], service: str) -> Iterator[Metric]:
    """The families with ``service`` on every sample that does not name one already."""
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [
            sample._replace(labels={SERVICE_LABEL: service, **sample.labels})
            if SERVICE_LABEL not in sample.labels
            else sample
            for sample in family.samples
        ]
        yield copy


def merge(families: Iterable[Metric]) -> list[Metric]:
    """One family per name (the text format allows no repeats), samples of all services."""
    merged: dict[str, Metric] = {}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            merged[family.name] = into = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        into.samples.extend(family.samples)
    return list(merged.values())


class _Families:
    """A collector that hands out families made beforehand (for ``generate_latest``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def own_families(service: str) -> list[Metric]:
    """This process's metrics, each sample labelled with ``service``."""
    return list(with_service(REGISTRY.collect(), service))


class _ServiceRegistry:
    """What a service's own listener serves: this process's registry with ``service`` on."""

    def __init__(self, service: str) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        return own_families(self._service)


class MetricsListener:
    """A service's own ``/metrics`` (no token: it is bound where ``metrics_address`` says)."""

    def __init__(self, service: str, address: str) -> None:
        self.service = service
        self.host, self.port = parse_address(address)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ServiceRegistry(self.service))
        self._server, self._thread = start_http_server(self.port, self.host, registry=registry)
        self.port = self._server.server_port
        log.info("metrics listener started", service=self.service, host=self.host, port=self.port)
        if not is_loopback_host(self.host):
            log.warning(
                "the metrics listener has no token and is reachable from other machines",
                service=self.service,
                metrics_address=f"{self.host}:{self.port}",
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


async def scrape_peer(client: httpx.AsyncClient, url: str) -> list[Metric] | None:
    """A peer's families, or None when it does not answer well within the client's timeout."""
    try:
        async with client.stream("GET", url + "/metrics") as response:
            if response.status_code != 200:
                return None
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_PEER_BYTES:
                    return None
        return list(text_string_to_metric_families(body.decode("utf-8", "replace")))
    except (httpx.HTTPError, ValueError, OSError) as exc:
        log.warning("metrics of a service could not be read", url=url, error=repr(exc))
        return None


class PeerMetrics:
    """The API's reading of its peers' metrics, with one httpx client for the process's life
    (built in the API's lifespan, closed at its stop): a client for each answer would load the
    CA bundle and open every peer connection again each time. The client belongs to the event
    loop it was built on."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # httpx's own timeouts are on wall time, a backstop: a step still waiting after 2
        # bounds of wall time is given up; anyio does not cancel a wait whose answer has
        # already come.
        self._client = httpx.AsyncClient(
            timeout=timeout * looptime.MOST_BOUNDS, follow_redirects=False
        )

    async def all_families(self, service: str, peers: dict[str, str]) -> list[Metric]:
        """This process's metrics and every peer's, merged; ``jobrunner_metrics_peer_up`` says
        which peers answered within the timeout."""
        families = own_families(service)
        if peers:
            # A deadline over the whole read too: a peer trickling bytes is cut off as well.
            answers = await asyncio.gather(
                *(_within(scrape_peer(self._client, url), self.timeout) for url in peers.values())
            )
            up = GaugeMetricFamily(
                "jobrunner_metrics_peer_up",
                "1 when the service's metrics were read for this answer, 0 when it did not answer.",
                labels=[SERVICE_LABEL],
            )
            for name, answer in zip(peers, answers, strict=True):
                up.add_metric([name], 0 if answer is None else 1)
                if answer is not None:
                    families.extend(with_service(answer, name))
            families.extend(with_service([up], service))
        return merge(families)

    async def close(self) -> None:
        """Closes the client's connections (at once: no TLS goodbye is waited for)."""
        await self._client.aclose()

    async def __aenter__(self) -> PeerMetrics:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _within(scrape: Any, timeout: float) -> list[Metric] | None:
    """The peer's families, or None when it has not answered within ``timeout`` of the loop's
    own time (``common.looptime``): a peer that answered while the API's loop was blocked by
    its other work is up, not left out. A backstop on wall time, ``MOST_BOUNDS`` bounds, over
    it: a loop blocked again and again cannot hold the API's answer longer."""
    try:
        async with asyncio.timeout(timeout * looptime.MOST_BOUNDS):
            return await looptime.within_loop_time(scrape, timeout)
    except TimeoutError:
        return None
