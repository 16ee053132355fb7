"""Where the projector's "waits for Postgres" line says Postgres is: the server connected to,
never the user or password."""

from __future__ import annotations

from jobrunner.common.postgresconnect import server_of


def test_a_url_with_a_host_names_it_and_leaves_the_password_out() -> None:
    named = server_of("postgresql://jobrunner:secret@db.internal:6432/jobs")
    assert named == "db.internal:6432/jobs"
    assert "secret" not in named


def test_a_unix_socket_given_as_host_in_the_query_is_named() -> None:
    """``?host=/run/postgresql``: asyncpg connects to that socket, not to localhost:5432."""
    named = server_of("postgresql://jobrunner:secret@/jobs?host=/run/postgresql&port=5433")
    assert named == "/run/postgresql:5433/jobs"
    assert "secret" not in named
