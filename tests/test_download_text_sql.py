"""A downloaded log's text (written by Postgres) is what the terminal commands print (Python's
``visible``), character for character: no control character reaches the file raw."""

from __future__ import annotations

import asyncpg
from hypothesis import strategies as st

from jobrunner.common.terminaltext import visible, visible_sql
from tests.servers import PostgresCluster
from tests.tools.drawn_examples import examples

# Text Postgres can store (no NUL, no lone surrogates), rich in what ``visible`` changes: every
# C0 control, DEL, C1 controls, bidi overrides, colour codes whole and cut, backslashes, quotes.
stored_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
shown_pieces = st.lists(
    st.sampled_from(
        [
            *(chr(code) for code in range(1, 0x20)),
            "\x7f", "\u0085", "\u009b", "\u009f", "\u202e", "\u2066", "\u2069", "\u202a",
            "\x1b[31m", "\x1b[0m", "\x1b[38:5:1m", "\x1b[3", "\x1bc", "\\", "'", "a", "é", "␇",
        ]
    ),
    max_size=30,
).map("".join)  # fmt: skip


async def test_postgres_shows_each_text_as_the_terminal_commands_do(
    pg_cluster: PostgresCluster,
) -> None:
    """The download (Postgres) and ``jobrunner logs`` (Python) show every text alike."""
    drawn = examples(stored_text | shown_pieces, 2000)
    url = await pg_cluster.fresh_database()
    try:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                f"SELECT {visible_sql('text')} AS shown "
                "FROM unnest($1::text[]) WITH ORDINALITY AS line(text, n) ORDER BY n",
                drawn,
            )
        finally:
            await conn.close()
    finally:
        await pg_cluster.drop_database(url)
    disagreements = [
        (text, row["shown"])
        for text, row in zip(drawn, rows, strict=True)
        if row["shown"] != visible(text)
    ]
    assert not disagreements, disagreements[:10]
    # The drawn texts reach both ways of showing (one symbol, several characters).
    shown = "".join(row["shown"] for row in rows)
    assert "␇" in shown
    assert "\\x9b" in shown or "\\u202e" in shown
