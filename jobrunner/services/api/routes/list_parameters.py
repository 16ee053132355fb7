"""The query parameters the newest-first lists (jobs, batches) share, as their OpenAPI shows them.

Declared once so that both lists document them alike; the values are checked by
``queryparams.Query``, which reads every parameter as the handler's own names it.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

PageCursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]
RepeatableValues = Annotated[
    list[str] | None, Parameter(description="repeatable or comma-separated")
]
CreatedFrom = Annotated[str | None, Parameter(description="ISO 8601, inclusive")]
CreatedTo = Annotated[str | None, Parameter(description="ISO 8601, exclusive")]
