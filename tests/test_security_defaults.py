"""Safe defaults: the first admin token, --no-auth only on loopback, NATS with a password
(embedded and in compose.yaml)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
import yaml
from nats.errors import NoServersError

from jobrunner.common.settings import Settings, SettingsError
from jobrunner.embedded.nats import EmbeddedNats, load_or_create_secret, nats_server_binary
from jobrunner.embedded.serverprocess import ServerProcess, free_port
from jobrunner.services.api.security import is_loopback
from jobrunner.supervisor import check_exposure, first_admin_token


async def test_first_start_creates_one_admin_token(settings: Settings) -> None:
    """The first start prints an admin token; later starts create none."""
    token = await first_admin_token(settings, settings.nats_url)
    again = await first_admin_token(settings, settings.nats_url)
    assert token is not None
    assert token.startswith("jrt_")
    assert again is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com"])
def test_no_auth_is_refused_off_loopback(settings: Settings, host: str) -> None:
    """``--no-auth`` with a non-loopback address stops before anything starts."""
    exposed = msgspec.structs.replace(settings, auth=False, host=host)
    with pytest.raises(SettingsError, match="loopback"):
        check_exposure(exposed)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_no_auth_is_allowed_on_loopback(settings: Settings, host: str) -> None:
    """On a loopback address ``--no-auth`` is accepted."""
    assert is_loopback(host)
    check_exposure(msgspec.structs.replace(settings, auth=False, host=host))


def test_auth_is_on_and_the_host_is_loopback_by_default() -> None:
    """Out of the box jobrunner wants tokens and listens on 127.0.0.1 only."""
    defaults = Settings()
    assert defaults.auth is True
    assert defaults.host == "127.0.0.1"


def test_up_refuses_no_auth_on_a_public_address(tmp_path: Path) -> None:
    """``jobrunner up --no-auth --host 0.0.0.0`` exits with a sentence, starting nothing."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobrunner.cli",
            "up",
            "--no-auth",
            "--host",
            "0.0.0.0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "loopback" in result.stderr
    assert not (tmp_path / "state" / "nats").exists()


@pytest.fixture
def nats_with_password(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        tmp_path / "nats", user="jobrunner", password=load_or_create_secret(tmp_path / "pw")
    )
    server.start()
    yield server
    server.stop()


async def test_embedded_nats_wants_its_password(nats_with_password: EmbeddedNats) -> None:
    """The embedded NATS refuses a client without the generated password."""
    nc = await nats.connect(nats_with_password.url)
    assert nc.is_connected
    await nc.close()
    with pytest.raises((NoServersError, nats.errors.Error)):
        await nats.connect(
            f"nats://127.0.0.1:{nats_with_password.port}",
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )


def test_nats_secret_is_owner_only(tmp_path: Path) -> None:
    """The generated NATS password file is readable by its owner alone and stays the same."""
    first = load_or_create_secret(tmp_path / "pw")
    assert (tmp_path / "pw").stat().st_mode & 0o077 == 0
    assert load_or_create_secret(tmp_path / "pw") == first
    assert len(first) >= 32


ROOT = Path(__file__).parent.parent


@pytest.fixture
def compose_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """nats-server started as compose.yaml starts it: its command, its config file, the password
    in its environment. Only the data directory and the ports differ (no container here)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["nats"]
    files = {c["target"]: compose["configs"][c["source"]]["file"] for c in service["configs"]}
    config = (ROOT / files["/etc/nats/jobrunner.conf"]).read_text()
    assert "store_dir: /data" in config
    local_config = tmp_path / "jobrunner.conf"
    local_config.write_text(config.replace("store_dir: /data", f"store_dir: {tmp_path / 'data'}"))
    command = [str(local_config) if arg in files else arg for arg in service["command"]]
    password = secrets.token_hex(24)
    monkeypatch.setenv("NATS_PASSWORD", password)
    port, http_port = free_port(), free_port()
    ports = ["--addr", "127.0.0.1", "--port", str(port), "--http_port", str(http_port)]
    server = ServerProcess(
        "nats-server",
        [nats_server_binary(), *command, *ports],
        log_file=tmp_path / "nats.log",
        ready_text="Server is ready",
    )
    server.start()
    try:
        healthcheck = next(arg for arg in service["healthcheck"]["test"] if "://" in arg)
        yield {
            "server": server,
            "port": port,
            "password": password,
            "healthcheck": healthcheck.replace(":8222/", f":{http_port}/"),
        }
    finally:
        server.stop()


async def test_compose_nats_wants_the_password_but_never_shows_it(
    compose_nats: dict[str, Any],
) -> None:
    """The compose NATS answers its healthcheck with JetStream on and admits only the user with
    NATS_PASSWORD, which is nowhere on its command line (what `ps` shows)."""
    async with httpx.AsyncClient() as client:
        health = await client.get(compose_nats["healthcheck"])
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"

    port, password = compose_nats["port"], compose_nats["password"]
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user="jobrunner", password=password)
    try:
        assert (await nc.jetstream().account_info()).limits is not None
    finally:
        await nc.close()
    with pytest.raises((NoServersError, nats.errors.Error)):
        await nats.connect(
            f"nats://127.0.0.1:{port}",
            user="jobrunner",
            password="wrong",
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )

    pid = compose_nats["server"].proc.pid
    assert password not in Path(f"/proc/{pid}/cmdline").read_text()
