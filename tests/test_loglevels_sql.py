"""The download's level-once check in Postgres answers as ``shows_level`` does, line for line."""

from __future__ import annotations

import asyncpg
from hypothesis import strategies as st

from jobrunner.common.loglevels import LEVELS, shows_level, shows_level_sql
from tests.servers import PostgresCluster
from tests.tools.drawn_examples import examples

# Text Postgres can store: no NUL, no lone surrogates.
stored_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
# Near misses of a level first: every level word and alias in any case, then any separator.
level_first = st.builds(
    lambda word, after, rest: word + after + rest,
    st.sampled_from([*LEVELS, "WARN", "FATAL", "CRITICAL"]).flatmap(
        lambda word: st.sampled_from([word, word.lower(), word.title(), "\x1b[31m" + word])
    ),
    st.sampled_from(["", " ", "\t", "  ", ":", "|", "-", "]", "\n", "\u00a0", "S", "\x1b[0m "]),
    stored_text,
)
pairs = st.tuples(stored_text | level_first, st.sampled_from(LEVELS))


async def test_postgres_and_python_agree_on_which_lines_show_their_level(
    pg_cluster: PostgresCluster,
) -> None:
    """The download (Postgres) and the terminal client (Python) leave out the same level columns."""
    drawn = examples(pairs, 2000)
    url = await pg_cluster.fresh_database()
    try:
        conn = await asyncpg.connect(url)
        try:
            in_postgres = await conn.fetch(
                f"SELECT {shows_level_sql('text', 'level')} AS shown "
                "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS line(text, level, n) "
                "ORDER BY n",
                [text for text, _ in drawn],
                [level for _, level in drawn],
            )
        finally:
            await conn.close()
    finally:
        await pg_cluster.drop_database(url)
    disagreements = [
        (text, level, row["shown"])
        for (text, level), row in zip(drawn, in_postgres, strict=True)
        if row["shown"] is not shows_level(text, level)
    ]
    assert not disagreements, disagreements[:10]
    # The generated pairs reach both answers, so agreement is not all one way.
    assert {row["shown"] for row in in_postgres} == {True, False}
