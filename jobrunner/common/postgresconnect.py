"""What a failed connect to Postgres means: an outage that may pass (waited out, retried) or a
refusal that will not (a wrong password or user, no such database: the configuration is wrong,
and waiting would hide it). Shared by the projector's start (services/projector/outage.py) and
the API's (services/api/readmodelgate.py), which end their start with a refusal."""

from __future__ import annotations

import asyncpg

# A connect that may succeed later: refused, reset, timed out, Postgres starting up or shutting
# down, its connections all taken. A refusal (below) is raised.
PASSING_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError among them
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)

# Postgres answered and refused this database_url: its user or password (InvalidPasswordError
# among them), or its database, which does not exist.
REFUSING_CONNECT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

WHAT_TO_DO_ON_REFUSAL = (
    "check database_url (its user, password and database name) and that the database exists"
)


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is Postgres refusing this database_url (no waiting makes it pass)."""
    return isinstance(exc, REFUSING_CONNECT_ERRORS)
