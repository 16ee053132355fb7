"""A fault cluster whose chosen services reach NATS through an AckHoldingProxy, and the fault
that proxy makes possible: struck between a publish and its ack (the message stored, the ack
held), as a freeze of NATS (SIGSTOP) or a kill and restart on the same port and store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats

from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from tests.ackholding_proxy import AckHoldingProxy
from tests.faults.cluster import START_TIMEOUT, FaultCluster
from tests.faults.services import Service


@dataclass(frozen=True)
class Fault:
    kill: bool  # SIGKILL and restart; else SIGSTOP
    seconds: float  # frozen for, or down for

    def __str__(self) -> str:
        return f"{'killed, down' if self.kill else 'frozen'} {self.seconds:g} s"


class ProxiedCluster(FaultCluster):
    """The fault cluster with the NATS connections of the services running one of ``proxied``
    (``api``, ``runner``, ``projector``) through ``proxy_url``."""

    proxy_url = ""
    proxied: frozenset[str] = frozenset()

    def add_service(
        self, name: str, command: str, hostname: str | None = None, **overrides: Any
    ) -> Service:
        if command in self.proxied:
            overrides["nats_url"] = self.proxy_url
        return super().add_service(name, command, hostname, **overrides)


@asynccontextmanager
async def proxied_cluster(
    lease_ttl: float, proxied: set[str], **settings: Any
) -> AsyncIterator[tuple[ProxiedCluster, AckHoldingProxy]]:
    """``settings``: other settings of every service (``FaultCluster``)."""
    with scratch_dir("jobrunner-test-faults-") as root:
        cluster = ProxiedCluster(root, lease_ttl, **settings)
        cluster.proxied = frozenset(proxied)
        async with AckHoldingProxy("127.0.0.1", cluster.nats.port) as proxy:
            cluster.proxy_url = proxy.url()
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await cluster.start()
                yield cluster, proxy
            finally:
                proxy.release()
                await cluster.stop()


async def strike_at_ack(
    cluster: FaultCluster,
    proxy: AckHoldingProxy,
    fault: Fault,
    subject: str,
    prefix: bool = False,
    armed: bool = False,
) -> str | None:
    """Arm the proxy on ``subject`` (unless ``armed`` already: a publish that may come before
    the caller gets here); once a publish to it has been stored (its ack held), strike
    ``fault`` and end it. What went wrong, if the fault could not be struck as meant."""
    if not armed:
        proxy.arm(subject, prefix)
    try:
        async with asyncio.timeout(30):
            await proxy.hit.wait()
    except TimeoutError:
        proxy.release()
        return f"no publish to {subject} was seen"
    try:
        # Struck once the message is stored (its ack seen, held back): a SIGSTOP at once could
        # land before the server read the publish.
        if not await proxy.stored():
            return f"NATS did not store the publish to {subject} (no ack to it seen)"
        if fault.kill:
            proxy.cut()
            await cluster.restart_nats(fault.seconds)
        else:
            cluster.pause_nats()
            await asyncio.sleep(fault.seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
        proxy.release()
    return None


async def duplicate_window(cluster: FaultCluster, seconds: float) -> None:
    """Set the event stream's duplicate window (as if that long had passed: a window of 2
    minutes is too long to wait out in a test)."""
    nc = await nats.connect(cluster.nats.url)
    try:
        js = nc.jetstream()
        stream = Names(cluster.settings.prefix).stream
        config = (await js.stream_info(stream)).config
        await js.update_stream(config.evolve(duplicate_window=seconds))
    finally:
        await nc.close()
