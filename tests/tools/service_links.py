"""The variables Kubernetes gives every pod for each Service of its namespace ("service links",
kubelet's pkg/kubelet/envvars), written as the kubelet writes them, and Hypothesis strategies
for the Services whose links start with ``JOBRUNNER_`` (one named ``jobrunner``, or
``jobrunner-`` and more)."""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass(frozen=True)
class ServicePort:
    number: int
    name: str = ""  # only the first port of a Service may be unnamed
    protocol: str = "TCP"


def _variable_name(name: str) -> str:
    return name.replace(".", "_").replace("-", "_").upper()


def _address(cluster_ip: str, port: int) -> str:
    host = f"[{cluster_ip}]" if ipaddress.ip_address(cluster_ip).version == 6 else cluster_ip
    return f"{host}:{port}"


def service_link_variables(
    service: str, cluster_ip: str, ports: list[ServicePort]
) -> dict[str, str]:
    """Every variable a Service named ``service`` gives a pod: ``<NAME>_SERVICE_HOST``,
    ``<NAME>_SERVICE_PORT`` (its first port's number) and one ``_<PORTNAME>`` per named port,
    then Docker's link variables: ``<NAME>_PORT`` (the first port's ``tcp://ip:port``) and for
    each port ``<NAME>_PORT_<n>_<PROTO>`` with its ``_PROTO``, ``_PORT`` and ``_ADDR``."""
    name = _variable_name(service)
    links = {
        f"{name}_SERVICE_HOST": cluster_ip,
        f"{name}_SERVICE_PORT": str(ports[0].number),
    }
    for port in ports:
        if port.name:
            links[f"{name}_SERVICE_PORT_{_variable_name(port.name)}"] = str(port.number)
    links[f"{name}_PORT"] = f"{ports[0].protocol.lower()}://{_address(cluster_ip, ports[0].number)}"
    for port in ports:
        each = f"{name}_PORT_{port.number}_{port.protocol}"
        links[each] = f"{port.protocol.lower()}://{_address(cluster_ip, port.number)}"
        links[f"{each}_PROTO"] = port.protocol.lower()
        links[f"{each}_PORT"] = str(port.number)
        links[f"{each}_ADDR"] = cluster_ip
    return links


_LABEL = string.ascii_lowercase + string.digits + "-"


def jobrunner_service_names() -> st.SearchStrategy[str]:
    """``jobrunner``, or ``jobrunner-`` and the rest of a DNS label (a Service's name): the
    Services whose links start with ``JOBRUNNER_``."""
    rest = st.sampled_from(["nats", "api", "postgres", "metrics", "nats-url", "port"]) | st.text(
        _LABEL, min_size=1, max_size=53
    ).filter(lambda text: text[-1] != "-")
    return st.just("jobrunner") | rest.map(lambda text: f"jobrunner-{text}")


def _port_names() -> st.SearchStrategy[str]:
    """A port's name as Kubernetes allows it (IANA_SVC_NAME): at most 15 lower-case letters,
    digits and single hyphens inside, at least one letter."""
    return (
        st.text(_LABEL, min_size=1, max_size=15)
        .filter(lambda text: text[0] != "-" and text[-1] != "-" and "--" not in text)
        .filter(lambda text: any(c in string.ascii_lowercase for c in text))
    )


def service_ports() -> st.SearchStrategy[list[ServicePort]]:
    """One to three ports: numbers 1-65535, TCP, UDP or SCTP; a lone port maybe unnamed
    (Kubernetes names every port of a Service that has more than one)."""
    numbers = st.integers(min_value=1, max_value=65535)
    protocols = st.sampled_from(["TCP", "UDP", "SCTP"])
    lone = st.builds(ServicePort, numbers, st.just("") | _port_names(), protocols)
    named = st.builds(ServicePort, numbers, _port_names(), protocols)
    return st.lists(lone, min_size=1, max_size=1) | st.lists(named, min_size=2, max_size=3)


def cluster_ips() -> st.SearchStrategy[str]:
    return st.ip_addresses().map(str)
