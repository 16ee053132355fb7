"""API tokens: their shape, their roles and when they can be used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobrunner.services.api.security.tokens import (
    NAME_RE,
    Role,
    TokenRecord,
    hash_token,
    new_token,
    token_id_of,
)

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_new_token_carries_its_id() -> None:
    """A new token starts with jrt_ and names its record's id; only its hash is kept."""
    token_id, token = new_token()
    assert token.startswith("jrt_")
    assert token_id_of(token) == token_id
    assert hash_token(token) != token


def test_new_tokens_differ() -> None:
    """Each new token is different from the others."""
    assert len({new_token()[1] for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "text",
    [
        "",
        "jrt_",
        "Bearer jrt_x",
        "jrt_0123456789abcdef_short",
        "jrt_0123456789abcdef_" + "a" * 43 + "\n",
    ],
)
def test_text_that_is_no_token_has_no_id(text: str) -> None:
    """Text of another shape (also with a trailing line break) is not taken for a token."""
    assert token_id_of(text) is None


@pytest.mark.parametrize(
    ("role", "may"), [(Role.VIEWER, Role.OPERATOR), (Role.OPERATOR, Role.ADMIN)]
)
def test_a_role_does_not_include_the_ones_above(role: Role, may: Role) -> None:
    """A viewer cannot start jobs; an operator cannot manage tokens."""
    assert not role.includes(may)


def test_admin_includes_every_role() -> None:
    """An admin may do what operators and viewers may."""
    assert all(Role.ADMIN.includes(role) for role in Role)


def record(**changes: object) -> TokenRecord:
    fields: dict[str, object] = {
        "id": "0123456789abcdef",
        "name": "ci",
        "role": Role.OPERATOR,
        "hash": "h",
        "created_at": NOW,
        **changes,
    }
    return TokenRecord(**fields)  # type: ignore[arg-type]


def test_token_is_usable_until_it_expires() -> None:
    """A token with an expiry works until that moment and not after."""
    expiring = record(expires_at=NOW + timedelta(hours=1))
    assert expiring.usable(NOW + timedelta(minutes=59))
    assert not expiring.usable(NOW + timedelta(hours=1))


def test_revoked_token_is_not_usable() -> None:
    """A revoked token stops working at once."""
    assert not record(revoked_at=NOW).usable(NOW)


@pytest.mark.parametrize("name", ["alice", "ci-bot.prod", "a@b", "A1"])
def test_token_names_that_are_accepted(name: str) -> None:
    """Token names are short words of letters, digits and . _ @ -."""
    assert NAME_RE.match(name)


@pytest.mark.parametrize(
    "name",
    ["", "-x", "a b", "x" * 65, "alice\n", "ä", "a\x00b", "ci\x1b[31m", "a\u202eb", "a\u2066b"],
)
def test_token_names_that_are_refused(name: str) -> None:
    """A name with spaces, a line break, a control character, a bidirectional override or
    isolate (it is shown as who requested a job or batch, and would turn the text after it
    around) or over 64 characters is refused (it names who did what)."""
    assert not NAME_RE.match(name)
