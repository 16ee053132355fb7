"""``jobrunner token create``: reading --expires-in and --expires-at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobrunner.services.api.security.tokens import TokenError
from jobrunner.token_command import parse_expiry


def test_no_expiry_means_never() -> None:
    """A token created without an expiry does not expire."""
    assert parse_expiry(None, None) is None


@pytest.mark.parametrize(
    ("raw", "delta"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2))],
)
def test_expires_in_counts_from_now(raw: str, delta: timedelta) -> None:
    """--expires-in 12h makes the token expire twelve hours from now."""
    before = datetime.now(UTC)
    at = parse_expiry(raw, None)
    assert at is not None
    assert before + delta <= at <= datetime.now(UTC) + delta


def test_expires_at_without_zone_is_utc() -> None:
    """--expires-at without a zone is read as UTC."""
    assert parse_expiry(None, "2027-01-31T18:00") == datetime(2027, 1, 31, 18, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expires_in", "expires_at", "words"),
    [
        ("1h", "2027-01-31T18:00Z", "not both"),
        ("1 hour", None, "a number and a unit"),
        ("1h\n", None, "a number and a unit"),
        ("99999999999w", None, "--expires-in"),
        (None, "next friday", "ISO 8601"),
    ],
    ids=["both", "words", "line-break", "too-far", "not-a-time"],
)
def test_bad_expiry_is_a_sentence(
    expires_in: str | None, expires_at: str | None, words: str
) -> None:
    """An expiry that cannot be read, or lies beyond any date, says what is expected."""
    with pytest.raises(TokenError, match=words):
        parse_expiry(expires_in, expires_at)


def test_role_choices_are_the_token_roles() -> None:
    """`jobrunner token create --role` offers exactly the roles a token can have."""
    from jobrunner.services.api.security.tokens import Role
    from jobrunner.token_command import DEFAULT_ROLE, ROLES

    assert tuple(r.value for r in Role) == ROLES
    assert Role.OPERATOR.value == DEFAULT_ROLE


def test_commands_other_than_token_do_not_import_litestar() -> None:
    """`jobrunner replay` and the other commands start without importing the web framework."""
    import subprocess
    import sys

    probe = (
        "import sys; from jobrunner.cli import build_parser; "
        "build_parser().parse_args(['replay']); print('litestar' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
