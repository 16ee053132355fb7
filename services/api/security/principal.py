"""Who is calling: the one object every route asks before it shows or changes a job.

The access middleware puts a ``Principal`` on every authenticated request (``request.user``).
Routes that read jobs use it in one of two ways:

* one row: ``principal_of(request).can_see(row)`` (else answer 404, as for a missing job);
* many rows: ``principal_of(request).owner`` is ``None`` for a token that sees every job and the
  token's name for one limited to its own jobs: add ``requested_by = <owner>`` to the query
  (``owner_clause`` builds it for asyncpg placeholders).

Live streams filter events the same way (``can_see_owner`` with the job's ``requested_by``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection

from services.api.security.tokens import Role


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: Role
    own_jobs_only: bool = False
    via_session: bool = False

    def has_role(self, role: Role) -> bool:
        return self.role.includes(role)

    @property
    def owner(self) -> str | None:
        """The ``requested_by`` every visible job must have, or ``None`` when all are visible."""
        return self.name if self.own_jobs_only else None

    def can_see_owner(self, requested_by: str | None) -> bool:
        return not self.own_jobs_only or requested_by == self.name

    def can_see(self, row: Mapping[str, Any] | Any) -> bool:
        """Whether this caller may see the job in ``row`` (a read-model row or dict)."""
        return self.can_see_owner(row["requested_by"])

    def owner_clause(self, args: list[Any], column: str = "requested_by") -> str | None:
        """An SQL condition limiting rows to this caller's jobs (appends its argument to ``args``),
        or ``None`` when the caller sees every job."""
        if self.owner is None:
            return None
        args.append(self.owner)
        return f"{column} = ${len(args)}"


# When authentication is switched off (``--no-auth``, loopback only).
ANONYMOUS_ADMIN = Principal(token_id="", name="local", role=Role.ADMIN)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller of an authenticated route (the middleware guarantees one is there)."""
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        # A public route asked for a caller: treat as a programming error, never as admin.
        raise RuntimeError("no authenticated principal on this request")
    return user


def optional_principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None
