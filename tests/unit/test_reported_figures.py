"""The figures tables of the fault and cluster suites (tests/reported_figures.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.reported_figures import ReportedFigures


@dataclass
class Row:
    name: str
    seconds: float | None


@dataclass
class Report:
    user_properties: list[tuple[str, Any]] = field(default_factory=list)


def test_a_figure_recorded_in_a_worker_reaches_the_table_through_its_report() -> None:
    """A figure recorded in a parallel run's worker is on the table the controller prints."""
    worker = ReportedFigures("row", Row, "rows", lambda: [])
    controller = ReportedFigures("row", Row, "rows", lambda: [])
    worker.record(Row("pause", 1.5))
    report: Any = Report()
    worker.attach(report)
    controller.receive(report)
    assert controller.figures == [Row("pause", 1.5)]
    assert not worker.pending


def test_a_figure_is_reported_once() -> None:
    """A figure goes out on the first report after it was recorded, never on a later one."""
    figures = ReportedFigures("row", Row, "rows", lambda: [])
    figures.record(Row("kill", None))
    first: Any = Report()
    later: Any = Report()
    figures.attach(first)
    figures.attach(later)
    assert len(first.user_properties) == 1
    assert later.user_properties == []
