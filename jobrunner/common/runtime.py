"""Finding a running installation: ``jobrunner up`` writes ``<state_dir>/runtime.json`` with the
URLs of its embedded servers, so tools run on the same machine (``jobrunner events``,
``jobrunner replay``) reach them without configuration."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from jobrunner.common.natsconnection import checked_servers
from jobrunner.common.settings import ENV_PREFIX, Settings, SettingsError, sources_of
from jobrunner.common.settingsrefusal import written
from jobrunner.contracts.names import Names

RUNTIME_FILE = "runtime.json"


def runtime_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / RUNTIME_FILE


def with_runtime(settings: Settings, environ: dict[str, str]) -> Settings:
    """``settings`` with the NATS/Postgres URLs and prefix of a running ``jobrunner up``.

    Used when the URLs were not configured explicitly (the defaults are still in place and no
    ``JOBRUNNER_NATS_URL`` is set) and the state directory has a ``runtime.json``.
    """
    defaults = Settings()
    explicit = f"{ENV_PREFIX}NATS_URL" in environ or settings.nats_url != defaults.nats_url
    path = runtime_path(settings)
    if explicit or not path.is_file():
        return settings
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return settings
    if not isinstance(data, dict):
        return settings  # damaged (or written by something else): as if there were none
    changes = {
        key: data[key]
        for key in ("nats_url", "database_url", "prefix")
        if isinstance(data.get(key), str)
    }
    if settings.database_url != defaults.database_url or f"{ENV_PREFIX}DATABASE_URL" in environ:
        changes.pop("database_url", None)
    # Named as their source: a sentence about one of them points at the file, not the
    # configuration (which did not set it).
    found = settings.replaced(source=f"jobrunner up's {path}", **changes)
    _check_taken(found, changes)
    return found


class RuntimeFileRefused(SettingsError):
    """A value taken from ``runtime.json`` that no command can use (the file damaged, or written
    by something else): the command stops with exit 78, naming the file."""


def _check_taken(settings: Settings, taken: dict[str, str]) -> None:
    """Refuse a NATS URL or a prefix taken from the file that no command could use (before, a
    URL's refusal named no source and a prefix's was a traceback)."""
    checks: dict[str, Callable[[str], object]] = {"nats_url": checked_servers, "prefix": Names}
    for name, check in checks.items():
        if name not in taken:
            continue
        try:
            check(taken[name])
        except (SettingsError, ValueError) as exc:
            where = written(name, taken[name], sources_of(settings).get(name), "cannot be used")
            raise RuntimeFileRefused(
                f"{where} ({exc}); start jobrunner up again, or remove the file"
            ) from None
