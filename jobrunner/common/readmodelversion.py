"""The version of the read models' layout, stored in Postgres beside the tables it describes.

The projector (their only writer) and the API (their reader) both check it: a database whose
tables are older than this jobrunner is rebuilt from the stream before anything reads it (see
services/projector/upgrade.py), and one written by a newer jobrunner is refused. Never a request
served from tables whose layout this code does not know.

The version lives in a one-row table of the read-model schema itself, so it moves with the schema
when a replay or an upgrade renames a rebuilt schema into place: the swap and the version are one
transaction.
"""

from __future__ import annotations

import asyncpg

from jobrunner.common.database import READ_SCHEMA

# Raised by hand whenever the tables, or what the projections write into them, change (a column,
# an index the code relies on, a counter computed differently): a database at a lower version is
# rebuilt from the stream. tests/unit/test_readmodel_version.py fails when the files that define
# the read models change while READMODEL_FINGERPRINT was not updated, so nobody forgets to decide.
READMODEL_VERSION = 1
# SHA-256 of the files that define the read models (readmodel_fingerprint() in the test).
READMODEL_FINGERPRINT = "1f2e626ec0f7afc5618ea8492fad015f27555af2b33a7b78acc299ce86312bc0"
# A schema with tables but no version table was written before versions were recorded.
UNVERSIONED = 0
VERSION_TABLE = "schema_version"
# Where the projector rebuilds older read models before it swaps them in (its checkpoint there
# tells the API how far it has come).
UPGRADE_SCHEMA = f"{READ_SCHEMA}_upgrade"
REBUILD_COMMAND = "jobrunner replay"
# The Postgres session lock a rebuild (the projector's, or ``jobrunner replay``) holds from its
# start to its swap (services/projector/replaylock.py): a session's lock goes with its session,
# so a rebuilder that dies (SIGKILL, its host gone) lets go of it. The API reads it to tell a
# rebuild under way from one abandoned. Next to the projector's swap lock ("jobrun").
REBUILD_LOCK = 0x6A6F6272756E + 1


async def stored_version(conn: asyncpg.Connection, schema: str = READ_SCHEMA) -> int | None:
    """The version of the read models in ``schema``; None when there are none (a fresh
    database), ``UNVERSIONED`` for tables written before versions were recorded."""
    tables = await conn.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2::text[])",
        schema,
        [VERSION_TABLE, "checkpoint"],
    )
    if not tables:
        return None
    if not await conn.fetchval(
        "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2", schema, VERSION_TABLE
    ):
        return UNVERSIONED
    found = await conn.fetchval(f"SELECT version FROM {schema}.{VERSION_TABLE} WHERE id = 1")
    return UNVERSIONED if found is None else int(found)


async def record(
    conn: asyncpg.Connection, schema: str, version: int = READMODEL_VERSION, by: str = ""
) -> None:
    """Write ``version`` into ``schema`` (in the caller's transaction, beside its tables)."""
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.{VERSION_TABLE} ("
        "id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1), version integer NOT NULL, "
        "written_by text NOT NULL DEFAULT '', written_at timestamptz NOT NULL DEFAULT now())"
    )
    await conn.execute(
        f"INSERT INTO {schema}.{VERSION_TABLE} (id, version, written_by) VALUES (1, $1, $2) "
        "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, "
        "written_by = EXCLUDED.written_by, written_at = now()",
        version,
        by,
    )


def describe(version: int) -> str:
    return "from before versions were recorded" if version == UNVERSIONED else f"v{version}"


def newer_sentence(found: int) -> str:
    return (
        f"the read models in Postgres were written by a newer jobrunner (read-model version "
        f"{found}; this one understands up to {READMODEL_VERSION}): run that version, or point "
        f"this one at another database"
    )


def rebuild_sentence(found: int) -> str:
    return (
        f"the read models in Postgres are older than this jobrunner (version {describe(found)}, "
        f"it needs v{READMODEL_VERSION}) and readmodel_auto_rebuild is off: run "
        f"`{REBUILD_COMMAND}` to rebuild them from the event stream, then start again"
    )


async def rebuild_held(conn: asyncpg.Connection, pid: int | None = None) -> bool:
    """Whether a session of this database holds ``REBUILD_LOCK`` (a rebuild is at work), or,
    given ``pid``, whether that backend does (a rebuild's own check that it still holds it). A
    bigint advisory lock: its high half in ``classid``, its low half in ``objid``."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ($2::int IS NULL OR pid = $2) "
            "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1)",
            REBUILD_LOCK,
            pid,
        )
    )
