"""compose.cluster.yaml, checked without Docker: what each service is given is what the code
reads, the NATS nodes' config forms a real JetStream cluster, and the proxy lets SSE through."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
import yaml
from nats.js.api import StreamConfig

from jobrunner.cli import build_parser
from jobrunner.common.settings import ENV_PREFIX, Settings, load_settings
from jobrunner.embedded.nats import nats_server_binary
from jobrunner.embedded.serverprocess import ServerProcess, free_port

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "compose.cluster.yaml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
API_SERVICES = ("api-1", "api-2")
# What a user exports before `docker compose up` (the comment at the file's top).
USER_ENV = {
    "NATS_PASSWORD": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "POSTGRES_PASSWORD": "f9e8d7c6b5a4938271605f4e3d2c1b0a",
    "WEBHOOK_SECRET": "5ec3e75ec3e75ec3e75ec3e75ec3e75e",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """What compose makes of ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}``."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise AssertionError(f"compose would refuse to start: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def jobrunner_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the jobrunner image (built from the Dockerfile)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def service_settings(
    service: dict[str, Any], monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str] = USER_ENV
) -> Settings:
    """The settings a service's container reads, through the code's own ``load_settings``."""
    for name in Settings.__struct_fields__:
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    monkeypatch.delenv(f"{ENV_PREFIX}CONFIG", raising=False)
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value), env))
    return load_settings()


def config_file(compose: dict[str, Any], service: dict[str, Any], target: str) -> Path:
    source = next(c["source"] for c in service["configs"] if c["target"] == target)
    return ROOT / compose["configs"][source]["file"]


def test_compose_cluster_names_only_settings_the_code_knows(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every JOBRUNNER_* variable in compose.cluster.yaml is a setting, and every value loads."""
    known = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
    services = jobrunner_services(compose)
    assert set(services) >= {"projector", "runner", "notifier", *API_SERVICES}
    for name, service in services.items():
        unknown = {k for k in service["environment"] if k.startswith(ENV_PREFIX)} - known
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        service_settings(service, monkeypatch)


def test_compose_cluster_refuses_to_start_without_the_secrets(compose: dict[str, Any]) -> None:
    """Without NATS_PASSWORD, POSTGRES_PASSWORD or WEBHOOK_SECRET compose refuses to start."""
    for missing in USER_ENV:
        env = {k: v for k, v in USER_ENV.items() if k != missing}
        refused = []
        for service in compose["services"].values():
            for value in (service.get("environment") or {}).values():
                try:
                    interpolate(str(value), env)
                except AssertionError:
                    refused.append(value)
        assert refused, f"nothing needs {missing}"


def test_compose_cluster_services_replicate_across_every_node(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every service names all three NATS nodes (with the password) and asks for 3 replicas."""
    for name, service in jobrunner_services(compose).items():
        settings = service_settings(service, monkeypatch)
        assert settings.stream_replicas == 3, name
        urls = [urlsplit(u.strip()) for u in settings.nats_url.split(",")]
        assert sorted(u.hostname or "" for u in urls) == list(NATS_NODES), name
        assert {(u.port, u.username, u.password) for u in urls} == {
            (4222, "jobrunner", USER_ENV["NATS_PASSWORD"])
        }, name
        assert urlsplit(settings.database_url).hostname == "postgres", name
        for node in NATS_NODES:
            assert service["depends_on"][node]["condition"] == "service_healthy", name


def test_compose_cluster_commands_are_jobrunner_commands(compose: dict[str, Any]) -> None:
    """Each service's command is one the jobrunner command line accepts."""
    parser = build_parser()
    for name, service in jobrunner_services(compose).items():
        args = parser.parse_args(service["command"])
        assert args.command == name.split("-")[0], name


def test_compose_cluster_runs_one_projector_and_scales_runners(compose: dict[str, Any]) -> None:
    """One projector, two runners (scalable), two API instances reachable only through the
    proxy."""
    services = compose["services"]
    assert services["projector"].get("deploy", {}).get("replicas", 1) == 1
    assert services["runner"]["deploy"]["replicas"] == 2
    for name in API_SERVICES:
        assert "ports" not in services[name], f"{name} is reachable around the proxy"
    assert services["proxy"]["ports"] == [
        "${JOBRUNNER_BIND:-127.0.0.1}:${JOBRUNNER_PORT:-8000}:8000"
    ]


def test_api_instances_believe_the_proxy_about_https(compose: dict[str, Any]) -> None:
    """Behind the proxy on https each API instance sees the scheme the browser used (so its
    session cookie is Secure): it trusts X-Forwarded-Proto, and only the proxy can reach it."""
    for name in API_SERVICES:
        service = compose["services"][name]
        assert service["environment"]["FORWARDED_ALLOW_IPS"] == "*", name
        assert "ports" not in service, name


def node_env(compose: dict[str, Any], node: str) -> dict[str, str]:
    env = compose["services"][node]["environment"]
    return {k: interpolate(str(v), USER_ENV) for k, v in env.items()}


def test_compose_cluster_nats_config_is_valid_for_every_node(compose: dict[str, Any]) -> None:
    """nats-server accepts the nodes' config (`nats-server -t`) with each node's environment."""
    names = set()
    for node in NATS_NODES:
        service = compose["services"][node]
        path = config_file(compose, service, "/etc/nats/jobrunner.conf")
        command = [str(path) if a == "/etc/nats/jobrunner.conf" else a for a in service["command"]]
        result = subprocess.run(
            [nats_server_binary(), "-t", *command],
            env=node_env(compose, node),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        names.add(node_env(compose, node)["NATS_SERVER_NAME"])
    assert names == set(NATS_NODES)


def local_node_config(text: str, store: Path, ports: dict[str, tuple[int, int]], node: str) -> str:
    """The compose config with its container addresses made loopback ports (and nothing else
    changed): each node's client and cluster port, the routes to them, its own store."""
    client, cluster = ports[node]
    text = text.replace("store_dir: /data", f"store_dir: {store}")
    text = text.replace("listen: 0.0.0.0:6222", f'listen: "127.0.0.1:{cluster}"')
    text = text.replace("http_port: 8222", f"http_port: {free_port()}")
    for other, (_, route_port) in ports.items():
        text = text.replace(f"//{other}:6222", f"//127.0.0.1:{route_port}")
    return f'listen: "127.0.0.1:{client}"\n' + text


@pytest.fixture
def compose_nats_cluster(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, tuple[int, int]]]:
    """The three nodes started from the compose config, on loopback ports."""
    ports = {node: (free_port(), free_port()) for node in NATS_NODES}
    template = config_file(
        compose, compose["services"]["nats-1"], "/etc/nats/jobrunner.conf"
    ).read_text()
    servers = []
    try:
        for node in NATS_NODES:
            config = tmp_path / f"{node}.conf"
            config.write_text(local_node_config(template, tmp_path / node, ports, node))
            for key, value in node_env(compose, node).items():
                monkeypatch.setenv(key, value)  # the child inherits it, as in its container
            server = ServerProcess(
                node,
                [nats_server_binary(), "--config", str(config)],
                log_file=tmp_path / f"{node}.log",
                ready_text="Server is ready",
            )
            server.start()
            servers.append(server)
        yield ports
    finally:
        for server in servers:
            server.stop()


@pytest.mark.timeout(60)
async def test_compose_cluster_nats_nodes_hold_a_stream_on_all_three(
    compose_nats_cluster: dict[str, tuple[int, int]],
) -> None:
    """The three nodes started from the compose config form one JetStream cluster that keeps a
    3-replica stream."""
    client_port = compose_nats_cluster["nats-1"][0]
    nc = await nats.connect(
        f"nats://127.0.0.1:{client_port}", user="jobrunner", password=USER_ENV["NATS_PASSWORD"]
    )
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + 30
        while True:  # the cluster elects its meta leader a moment after the nodes start
            try:
                await js.add_stream(StreamConfig(name="r3", subjects=["r3.>"], num_replicas=3))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        await js.publish("r3.x", b"kept thrice")
        info = await js.stream_info("r3")
        assert info.cluster is not None
        names = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
        assert names == set(NATS_NODES)
    finally:
        await nc.close()


def caddyfile(compose: dict[str, Any]) -> str:
    return config_file(compose, compose["services"]["proxy"], "/etc/caddy/Caddyfile").read_text()


def without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_proxy_spreads_requests_over_both_api_instances(compose: dict[str, Any]) -> None:
    """The proxy listens on the port compose publishes and sends requests to both API
    instances, at the port they serve on, taking an instance out when /health says 503."""
    text = without_comments(caddyfile(compose))
    assert re.search(r"^:8000 \{", text, re.M)
    upstreams = re.search(r"reverse_proxy ([^{\n]+)\{", text)
    assert upstreams is not None
    ports = {s: compose["services"][s]["command"][-1] for s in API_SERVICES}
    assert upstreams.group(1).split() == [f"{s}:{ports[s]}" for s in API_SERVICES]
    assert re.search(r"^\s*health_uri /health$", text, re.M)
    assert re.search(r"^\s*lb_try_duration \d+s$", text, re.M)


def test_proxy_passes_sse_through_unbuffered(compose: dict[str, Any]) -> None:
    """The proxy sends each SSE frame on at once (no buffering, no compression) and never
    times out a long, quiet stream."""
    text = without_comments(caddyfile(compose))
    assert re.search(r"^\s*flush_interval -1$", text, re.M)
    assert not re.search(r"^\s*encode\b", text, re.M)
    for timeout in ("read_timeout", "write", "idle", "write_timeout"):
        for value in re.findall(rf"^\s*{timeout} (\S+)$", text, re.M):
            assert value == "0" or timeout == "idle", f"{timeout} {value} would cut SSE streams"


@pytest.mark.skipif(shutil.which("caddy") is None, reason="no caddy binary on this machine")
def test_proxy_config_is_valid_caddy(compose: dict[str, Any]) -> None:
    """Caddy accepts the Caddyfile as it stands (`caddy validate`)."""
    path = config_file(compose, compose["services"]["proxy"], "/etc/caddy/Caddyfile")
    result = subprocess.run(
        ["caddy", "validate", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
