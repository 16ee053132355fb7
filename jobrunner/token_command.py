"""``jobrunner token create|list|revoke``: manage API tokens straight in the NATS KV bucket.

NATS is found from the settings, else from ``<state_dir>/runtime.json`` of a running
``jobrunner up`` (which holds the NATS credentials; the file is readable by its owner only).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from jobrunner import oneshot
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

if TYPE_CHECKING:
    from jobrunner.services.api.security.tokens import TokenRecord

# The token store lives in the API's security package, which imports Litestar (half a second of
# CPU): it is imported when a token command runs, not for every ``jobrunner`` command's parser.
# The roles are named here for the same reason (a unit test keeps them equal to ``Role``).
ROLES = ("viewer", "operator", "admin")
DEFAULT_ROLE = "operator"

_DURATION_RE = re.compile(r"^(\d+)([mhdw])\Z")  # \Z: "$" lets a final "\n" through
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    from jobrunner.services.api.security.tokens import TokenError

    if expires_in and expires_at:
        raise TokenError("give --expires-in or --expires-at, not both")
    if expires_in:
        match = _DURATION_RE.match(expires_in)
        if not match:
            raise TokenError("--expires-in takes a number and a unit: 30m, 12h, 90d, 2w")
        try:
            return datetime.now(UTC) + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise TokenError(f"--expires-in {expires_in} lies beyond any date") from None
    if expires_at:
        try:
            moment = datetime.fromisoformat(expires_at)
        except ValueError:
            raise TokenError("--expires-at takes an ISO 8601 time: 2027-01-31T18:00Z") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def describe(record: TokenRecord) -> str:
    state = "active" if record.usable() else ("revoked" if record.revoked_at else "expired")
    expiry = record.expires_at.isoformat(timespec="seconds") if record.expires_at else "never"
    scope = "own jobs" if record.own_jobs_only else "all jobs"
    return (
        f"{record.id}  {record.name:<20} {record.role.value:<8} {scope:<8}  "
        f"expires {expiry:<25} {state}"
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from jobrunner.services.api.security.tokens import TokenStore

    nc = await oneshot.connect(settings, "jobrunner-token-cli")
    try:
        # The first token of a cluster may come before any API instance made the bucket: make
        # it with the replicas every other bucket has, or it would live on one node alone.
        store = await TokenStore.open(
            nc.jetstream(), Names(settings.prefix), settings.stream_replicas
        )
        if args.token_command == "create":
            expires = parse_expiry(args.expires_in, args.expires_at)
            record, token = await store.create(
                args.name,
                args.role,
                expires_at=expires,
                own_jobs_only=args.own_jobs,
                created_by="cli",
            )
            print(describe(record), file=sys.stderr)
            print("The token (shown once; store it now):", file=sys.stderr)
            print(token, flush=True)
        elif args.token_command == "list":
            records = await store.all()
            if not records:
                print("no tokens", file=sys.stderr)
            for record in records:
                print(describe(record))
        elif args.token_command == "revoke":
            print(describe(await store.revoke(args.token)))
    finally:
        await eventstore.close(nc)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tokens, common = oneshot.add_command(sub, "token", "create, list and revoke API tokens")
    create = tokens.add_parser("create", help="create a token and print it once", parents=[common])
    create.add_argument("name", help="who or what uses it; recorded with every job it starts")
    create.add_argument(
        "--role",
        choices=ROLES,
        default=DEFAULT_ROLE,
        help="viewer: read and watch; operator: also start and cancel; admin: also tokens",
    )
    create.add_argument("--expires-in", help="e.g. 12h, 90d, 2w")
    create.add_argument("--expires-at", help="ISO 8601 time")
    create.add_argument(
        "--own-jobs", action="store_true", help="the token sees only the jobs it started"
    )
    tokens.add_parser("list", help="every token (never the secret)", parents=[common])
    revoke = tokens.add_parser("revoke", help="revoke a token by id or name", parents=[common])
    revoke.add_argument("token", help="the token's id or name")


def main(settings: Settings, args: argparse.Namespace) -> int:
    from jobrunner.services.api.security.tokens import TokenError

    try:
        return asyncio.run(run(settings, args))
    except TokenError as exc:
        print(f"jobrunner token: {exc}", file=sys.stderr)
        return 2
