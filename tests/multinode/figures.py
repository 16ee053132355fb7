"""What each cluster scenario did, collected during the run and printed as a table at its end,
for the lead to quote.

Also a pytest plugin (named in tests/conftest.py's ``pytest_plugins``): a figure recorded in a
test travels on that test's report (tests/reported_figures.py), so the table is complete when the
suite runs in parallel.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import pytest

from tests.reported_figures import ReportedFigures


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


REPORTED = ReportedFigures(
    "cluster_figure",
    Figure,
    "cluster: what each node loss did to the jobs and their viewers",
    table,
)
FIGURES = REPORTED.figures
record = REPORTED.record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    REPORTED.attach(report)
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    REPORTED.receive(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    REPORTED.summary(terminalreporter)
