"""Callback tokens: random, shown once, kept as a hash, compared in constant time."""

from __future__ import annotations

import pytest

from jobrunner.common import callbacktoken


def test_minted_tokens_are_long_random_and_distinct() -> None:
    """Each token carries 256 random bits (43 URL-safe characters) and no two are alike."""
    tokens = {callbacktoken.mint().token for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 for t in tokens)


def test_only_the_hash_is_kept_and_it_matches_its_token() -> None:
    """The stored hash is the token's SHA-256 and no substring of it; it matches only it."""
    minted = callbacktoken.mint()
    assert minted.token not in minted.token_hash
    assert len(minted.token_hash) == 64
    assert callbacktoken.matches(minted.token, minted.token_hash)
    assert not callbacktoken.matches(minted.token + "x", minted.token_hash)
    assert not callbacktoken.matches(callbacktoken.mint().token, minted.token_hash)


def test_no_stored_hash_matches_nothing() -> None:
    """A job without a hash (not external) is opened by no token, not even an empty one."""
    assert not callbacktoken.matches("", None)
    assert not callbacktoken.matches("0" * 64, None)


def test_derived_tokens_repeat_per_job_and_differ_between_jobs_and_secrets() -> None:
    """A retried batch answers the same token per job; other jobs or secrets get others."""
    secret, other = b"s" * 32, b"t" * 32
    first = callbacktoken.derive(secret, "job-1")
    assert callbacktoken.derive(secret, "job-1") == first
    assert callbacktoken.derive(secret, "job-2").token != first.token
    assert callbacktoken.derive(other, "job-1").token != first.token
    assert len(first.token) == 43
    assert callbacktoken.matches(first.token, first.token_hash)


def test_a_short_secret_is_refused() -> None:
    """A secret under 32 bytes would make tokens weaker than random ones: refused."""
    with pytest.raises(ValueError, match="32 bytes"):
        callbacktoken.derive(b"short", "job-1")
