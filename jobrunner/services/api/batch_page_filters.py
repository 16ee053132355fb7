"""The /batches page's filters, checked as ``GET /api/batches`` checks them.

The page's selects and date fields cannot show a value outside their choices: a link with
``?status=bogus`` (hand-edited, or from an older version) came up with "any" selected and listed
every batch, a wider list than the link asked for and no word of why. So each value the page
cannot show is named on the page, with what it may be, and nothing is listed until it is fixed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from datetime import date

from jobrunner.services.api.batch_readmodels import BATCH_STATUSES
from jobrunner.services.api.queryparams import (
    ARCHIVED_CHOICES,
    MAX_SEARCH_LENGTH,
    search_problem,
)

# Filters GET /api/batches takes as a comma-separated list (``status=running,failed``).
LISTS = frozenset({"status", "job_type"})
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")  # what an <input type="date"> holds


def _day(value: str) -> date | None:
    if not _DAY.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def filter_problems(
    filters: dict[str, str], job_types: Collection[str], t: Callable[..., str]
) -> list[str]:
    """A sentence (in the page's language, from ``t``) for each filter value the page cannot
    take; none when every value is one of its choices (or empty)."""
    problems = []
    choices = {
        "status": BATCH_STATUSES,
        "archived": ARCHIVED_CHOICES,
        "job_type": tuple(sorted(job_types)),
    }
    for name, allowed in choices.items():
        values = filters[name].split(",") if name in LISTS else [filters[name]]
        for value in (v.strip() for v in values):
            if value and value not in allowed:
                problems.append(
                    t("filters.bad_choice", value=value, name=name, choices=", ".join(allowed))
                )
    search = search_problem(filters["search"])
    if search:  # the API's bound: else a page, then "cannot be loaded right now"
        problems.append(t(f"filters.search_{search}", name="search", max=str(MAX_SEARCH_LENGTH)))
    days = {}
    for name in ("created_from", "created_to"):
        value = filters[name]
        if value:
            days[name] = _day(value)
            if days[name] is None:
                problems.append(t("filters.bad_date", value=value, name=name))
    start, end = days.get("created_from"), days.get("created_to")
    if start is not None and end is not None and start > end:
        problems.append(
            t("filters.bad_range", start=filters["created_from"], end=filters["created_to"])
        )
    return problems
