"""A WHERE clause of a read-model query, built one condition at a time.

Every value goes in as a numbered parameter (``$1``, ``$2``, ...) and never into the text, so no
filter a client sends can change the statement: the jobs, batches and log-line queries all number
their parameters here.
"""

from __future__ import annotations

from typing import Any


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Conditions:
    """The conditions of a WHERE clause (joined by AND) and the parameters they number."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        """``value`` as the next parameter: its placeholder, to write into a condition."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str) -> None:
        self.where.append(condition)

    def add_search(self, expression: str, text: str) -> None:
        """``expression`` holds ``text``, case-insensitive, LIKE's wildcards taken literally."""
        self.add(f"{expression} ILIKE {self.arg(like_pattern(text))}")

    def clause(self) -> str:
        """``WHERE ...``, or nothing when there is no condition."""
        return f"WHERE {' AND '.join(self.where)}" if self.where else ""
