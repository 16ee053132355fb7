"""Safe defaults: the first admin token, --no-auth only on loopback, NATS with a password."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.errors import NoServersError

from jobrunner.embedded.nats import EmbeddedNats, load_or_create_secret
from jobrunner.settings import Settings, SettingsError
from jobrunner.supervisor import check_exposure, first_admin_token
from services.api.security import is_loopback


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
