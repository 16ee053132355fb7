"""What each cluster scenario did, collected during the run and printed as a table at its end,
for the lead to quote. Also a pytest plugin (named in tests/conftest.py's ``pytest_plugins``), as
tests/faults/figures.py is: a figure recorded in a test travels on that test's report, so the
table is complete when the suite runs in parallel (pytest-xdist), where only the controller
prints."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PROPERTY = "cluster_figure"


@dataclass
class Figure:
    scenario: str
    outcome: str  # the jobs' end, e.g. "A completed, B completed"
    printed: int  # lines the tools wrote, by their own records
    stored: int  # lines in Postgres
    received: str  # lines each SSE client received, e.g. "120 x 4 clients"
    progressed_s: float | None  # fault -> jobs progressed again (a line printed after it stored)
    election_s: float | None  # fault -> a stream leader seen again by a client
    holds: bool  # every invariant the test checks held
    note: str = ""


# Recorded by the running test, not yet on a report.
_PENDING: list[Figure] = []
# Every figure reported in this run (in the process that prints the summary).
FIGURES: list[Figure] = []


def record(figure: Figure) -> None:
    _PENDING.append(figure)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table() -> list[str]:
    rows = [
        "| scenario | jobs | printed | stored | received | progressed s | election s | holds "
        "| note |",
        "|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for f in FIGURES:
        rows.append(
            f"| {f.scenario} | {f.outcome} | {f.printed} | {f.stored} | {f.received} "
            f"| {seconds(f.progressed_s)} | {seconds(f.election_s)} "
            f"| {'yes' if f.holds else 'NO'} | {f.note} |"
        )
    return rows


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    while _PENDING:
        report.user_properties.append((PROPERTY, dataclasses.asdict(_PENDING.pop(0))))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == PROPERTY:
            FIGURES.append(Figure(**value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("cluster: what each node loss did to the jobs and their viewers")
    for row in table():
        terminalreporter.write_line(row)
