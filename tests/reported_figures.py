"""Figures a test records (what a fault did, what a node loss did), carried on the test's report
and printed as a table at the end of the run.

On the report, because a parallel run (pytest-xdist) runs the tests in worker processes and only
the controller prints: a figure kept in the worker's memory would never reach the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pytest

F = TypeVar("F")


class ReportedFigures(Generic[F]):
    """One table's figures. Its module is a pytest plugin (``pytest_plugins`` of
    tests/conftest.py) whose hooks call ``attach``, ``receive`` and ``summary``."""

    def __init__(self, name: str, kind: type[F], title: str, table: Callable[[], list[str]]):
        self.name = name
        self.kind = kind
        self.title = title
        self.table = table
        self.pending: list[F] = []  # recorded by the running test, not yet on a report
        self.figures: list[F] = []  # every figure reported in this run, in this process

    def record(self, figure: F) -> None:
        self.pending.append(figure)

    def attach(self, report: pytest.TestReport) -> None:
        while self.pending:
            figure: Any = self.pending.pop(0)  # a dataclass instance
            report.user_properties.append((self.name, dataclasses.asdict(figure)))

    def receive(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == self.name:
                self.figures.append(self.kind(**value))

    def summary(self, terminalreporter: Any) -> bool:
        """Write the table (when anything was recorded); whether it did."""
        if not self.figures:
            return False
        terminalreporter.section(self.title)
        for row in self.table():
            terminalreporter.write_line(row)
        return True
