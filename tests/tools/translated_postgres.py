"""A Postgres of the test's own whose sessions speak another language than English, as a German
or French operator's server does (``lc_messages``): its errors' messages are translated, their
SQLSTATE is not.

Postgres takes as ``lc_messages`` only a locale the C library knows, and this machine may know
none but C and POSIX (a container's). So the locale is compiled with ``localedef`` from the C
library's own sources (Debian's ``locales`` package) into a scratch directory of the test run's
(``compiled_locales``, once per run), and the server is started with ``LOCPATH`` naming that
directory in its own environment: nothing is installed on the machine, and only the server sees
it. The translations are Postgres's own
(``/usr/share/locale/<language>/LC_MESSAGES/postgres-<major>.mo``). The postmaster itself logs in
English (the test servers' readiness is read from its log): the language is set for the server's
database, as a superuser may (``ALTER DATABASE ... SET lc_messages``), so every session of it
speaks the language, the API's as the operator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from jobrunner.embedded.postgres import EmbeddedPostgres
from tests import servers

ENGLISH = "en"
GERMAN = "de_DE.UTF-8"

# Postgres's message for a division by zero, in English: a server that says another speaks
# another language.
ENGLISH_DIVISION_BY_ZERO = "division by zero"


def compile_locale(directory: Path, locale: str) -> None:
    """Compile ``locale`` (``de_DE.UTF-8``) from the C library's sources into ``directory``,
    unless a test of this run did already (``compiled_locales``); a machine without them skips
    the test, naming what is missing."""
    if (directory / locale / "LC_MESSAGES").exists():
        return
    territory, _, charmap = locale.partition(".")
    if shutil.which("localedef") is None:
        pytest.skip("no localedef on this machine: a locale other than C cannot be made")
    if not Path("/usr/share/i18n/locales", territory).exists():
        pytest.skip(f"no source of the {territory} locale (Debian's locales package)")
    # localedef says "not ISO C compliant"-style warnings of some sources with exit code 1,
    # having written the locale all the same: what it wrote is checked instead.
    made = subprocess.run(
        ["localedef", "-i", territory, "-f", charmap, str(directory / locale)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (directory / locale / "LC_MESSAGES").exists(), made.stderr
    # Postgres runs as the postgres user when the tests run as root: it must read the locale.
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def server_environment(locales: Path) -> dict[str, str]:
    """The environment of a server given the locales in ``locales``: this process's, with
    LOCPATH naming them and no LANGUAGE (GNU gettext's list of languages to prefer, which
    would overrule lc_messages)."""
    env = {name: value for name, value in os.environ.items() if name != "LANGUAGE"}
    env["LOCPATH"] = str(locales)
    return env


@contextlib.asynccontextmanager
async def postgres_speaking(
    locale: str, prefix: str, locales: Path, **settings: str
) -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of the test's own (``servers.own_postgres``, its scratch directories named
    ``prefix``, ``settings`` on top of the test servers' own) whose database speaks
    ``locale``'s language, compiled into ``locales`` (the session's ``compiled_locales``) if
    not there yet; ``ENGLISH``: as the test servers do."""
    if locale == ENGLISH:
        async with servers.own_postgres(prefix, env=None, **settings) as server:
            yield server
        return
    await asyncio.to_thread(compile_locale, locales, locale)
    async with servers.own_postgres(prefix, env=server_environment(locales), **settings) as server:
        superuser = await asyncpg.connect(server.url)
        try:
            await superuser.execute(
                f"ALTER DATABASE \"{server.database}\" SET lc_messages = '{locale}'"
            )
        finally:
            await superuser.close()
        if await division_by_zero_message(server) == ENGLISH_DIVISION_BY_ZERO:
            # The locale was taken (an unknown one is refused above), its messages not:
            # this Postgres has no translations (built without NLS, no .mo installed).
            pytest.skip(f"this Postgres has no translations for {locale}")
        yield server


async def division_by_zero_message(server: EmbeddedPostgres) -> str:
    """Postgres's message for a division by zero in a new session of ``server``'s database."""
    conn = await asyncpg.connect(server.url)
    try:
        await conn.fetchval("SELECT 1 / 0")
    except asyncpg.DivisionByZeroError as exc:
        return str(exc.args[0])
    finally:
        await conn.close()
    raise AssertionError("Postgres divided by zero")
