"""Who is calling: the one object every route asks before it shows or changes a job.

The access middleware puts a ``Principal`` on every authenticated request (``request.user``).
Routes that read jobs use it in one of two ways:

* one row: ``principal_of(request).can_see(row)`` (else answer 404, as for a missing job);
* many rows: ``principal_of(request).owner`` is ``None`` for a token that sees every job and the
  token's name for one limited to its own jobs: pass it as ``JobFilter(requested_by=...)``
  (``readmodels.list_jobs`` adds ``requested_by = <owner>`` to the query).

Live streams filter events with ``scope.OwnerFilter(lookups, principal.owner)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection

from jobrunner.services.api.security.tokens import Role


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
